import os

from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def read_root() -> dict:
    return {"hello": "Diploi", "stage": os.environ.get("STAGE"), "secret": os.environ.get("API_SECRET")}


@app.get("/items/{item_id}")
def read_item(item_id: int, q: str | None = None) -> dict:
    return {"item_id": item_id, "q": q}
