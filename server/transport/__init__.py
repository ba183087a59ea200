"""How requests reach Loomwork: the grpc.aio app (interceptors, errors → status, health) and
the HTTP endpoint (webhooks, OAuth callbacks); the servicers behind them are in
`server.servicers`."""
