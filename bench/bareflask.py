"""The floor's reference: a bare Flask app with the broker's /healthz answer and nothing else.

Served by the Procfile's own gunicorn flags (``bench.procs.start_bare_flask``), so the floor
row compares what the broker adds to a request with what Flask and gunicorn cost on their own.
"""

from flask import Flask

app = Flask(__name__)


@app.get("/healthz")
def healthz():
    return {"status": "ok"}
