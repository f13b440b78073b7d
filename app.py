"""Entry point: ``flask --app app run``, ``gunicorn app:app`` or ``python app.py``."""

from broker import create_app

app = create_app()

if __name__ == "__main__":
    app.run(host="127.0.0.1", port=5000, threaded=True)
