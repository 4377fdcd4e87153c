from mri_tumor.cli import main

raise SystemExit(main())
