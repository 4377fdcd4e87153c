"""The API's routers: predictions, the model card, and the health probes."""
