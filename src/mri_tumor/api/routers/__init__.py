"""The API's routers: predictions, scan answers, the model card, confirmed cases (feedback),
and the health probes."""
