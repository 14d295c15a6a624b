import os

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> dict:
    return {"hello": "Flask", "server": os.environ.get("SERVER_SOFTWARE", "werkzeug").split("/")[0]}
