"""The API's routers: predictions, the model card, confirmed cases (feedback), and the
health probes."""
