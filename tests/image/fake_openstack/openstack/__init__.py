"""A stand-in for openstacksdk, for the tests of tools/glance-upload.py.

Only the surface the uploader uses: connect(), Connection.authorize() and
the image proxy's images(), create_image(), get_image(), delete_image().
Glance is a JSON file ($FAKE_GLANCE_STATE) so that separate processes (the
name check, then the upload) see the same images.  Knobs:
FAKE_GLANCE_CORRUPT=1 (Glance stores other bytes than were sent),
FAKE_GLANCE_STATUS=<status> (status of new images; default active),
OS_PASSWORD=wrong (authentication fails).
"""

import hashlib
import json
import os
import uuid

_STATE = os.environ["FAKE_GLANCE_STATE"]


def _load():
    try:
        with open(_STATE) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"images": [], "connects": [], "creates": [], "deletes": []}


def _save(state):
    with open(_STATE, "w") as f:
        json.dump(state, f, indent=1)


class Image:
    def __init__(self, record):
        self.__dict__.update(record)


class _ImageProxy:
    def images(self, name=None, **_):
        return [Image(r) for r in _load()["images"] if name is None or r["name"] == name]

    def create_image(
        self,
        name,
        *,
        filename=None,
        disk_format=None,
        container_format=None,
        md5=None,
        sha256=None,
        allow_duplicates=False,
        wait=False,
        timeout=3600,
        **properties,
    ):
        with open(filename, "rb") as f:
            data = f.read()
        if os.environ.get("FAKE_GLANCE_CORRUPT"):
            data = data[:-1] + b"!"
        record = {
            "id": str(uuid.uuid4()),
            "name": name,
            "status": os.environ.get("FAKE_GLANCE_STATUS", "active"),
            "checksum": hashlib.md5(data).hexdigest(),
            "hash_algo": "sha512",
            "hash_value": hashlib.sha512(data).hexdigest(),
            "size": len(data),
            "disk_format": disk_format,
            "container_format": container_format,
            "properties": properties,
        }
        state = _load()
        state["images"].append(record)
        state["creates"].append(
            {"name": name, "md5": md5, "sha256": sha256, "wait": wait, "filename": filename}
        )
        _save(state)
        return Image(record)

    def get_image(self, image_id):
        for record in _load()["images"]:
            if record["id"] == image_id:
                return Image(record)
        raise LookupError(f"no image {image_id}")

    def delete_image(self, image_id, ignore_missing=True):
        state = _load()
        state["images"] = [r for r in state["images"] if r["id"] != image_id]
        state["deletes"].append(image_id)
        _save(state)


class Connection:
    def __init__(self):
        self.image = _ImageProxy()

    def authorize(self):
        if os.environ.get("OS_PASSWORD") == "wrong":
            raise RuntimeError("The request you have made requires authentication. (HTTP 401)")
        return "token"


def connect(**_):
    state = _load()
    state["connects"].append(
        {"OS_CLOUD": os.environ.get("OS_CLOUD"), "OS_AUTH_URL": os.environ.get("OS_AUTH_URL")}
    )
    _save(state)
    return Connection()
