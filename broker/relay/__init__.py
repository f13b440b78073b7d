"""The relay: the websocket server that carries RFB between viewers and the clouds' console proxies."""
