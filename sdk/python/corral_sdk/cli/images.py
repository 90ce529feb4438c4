"""`corral image build -t NAME DIR | import | ls | rm`: the org's own images."""
from __future__ import annotations

import argparse
import json
import sys

from .sandbox import _pairs
from .. import Image, ImageBuildError, NotFoundError


def _log(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _done(img: Image, as_json: bool) -> int:
    if as_json:
        print(json.dumps(img.info, indent=2, sort_keys=True))
    else:
        size = (img.info.get("size_bytes") or 0) >> 20
        print(f"{img.id} {img.name} {img.state} {size} MiB")
    return 0


def build(a: argparse.Namespace) -> int:
    """Live build output on stderr, the image on stdout. Without -t: the
    server's built-in guest image, where a server install added that."""
    if not a.tag:
        if getattr(a, "builtin", None):
            return int(a.builtin(a))
        raise SystemExit("corral: image build needs -t NAME (your image's name) and a DIR")
    try:
        img = Image.build(a.dir, a.tag, dockerfile=a.file,
                          build_args=_pairs(a.build_arg, "--build-arg"),
                          on_log=_log)
    except ImageBuildError as e:
        print(f"corral: {e}", file=sys.stderr)
        return 1
    return _done(img, a.json)


def cmd_import(a: argparse.Namespace) -> int:
    try:
        img = Image.import_archive(a.archive, a.tag, on_log=_log)
    except ImageBuildError as e:
        print(f"corral: {e}", file=sys.stderr)
        return 1
    return _done(img, a.json)


def _find(ref: str) -> Image:
    try:
        return Image.get(ref)
    except NotFoundError:
        hits = [i for i in Image.list() if i.name == ref]
        if not hits:
            raise
        return hits[0]


def cmd_ls(a: argparse.Namespace) -> int:
    images = Image.list()
    if a.json:
        print(json.dumps([i.info for i in images], indent=2, sort_keys=True))
        return 0
    for i in images:
        size = (i.info.get("size_bytes") or 0) >> 20
        print(f"{i.id}  {i.name:<24} {i.state:<9} {size:>6} MiB  {i.info.get('created_at', '')}")
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    for ref in a.image:
        img = _find(ref)
        img.delete()
        print(f"{img.id} {img.state}")
    return 0


def register(sub: argparse._SubParsersAction, parsers: dict) -> None:
    img = parsers["image"] = sub.add_parser("image", help="your images: built from a "
                                            "Dockerfile or imported from an OCI archive")
    img_sub = img.add_subparsers(dest="image_cmd", required=True)
    b = parsers["image build"] = img_sub.add_parser(
        "build", help="build your image from DIR's Dockerfile: -t NAME DIR")
    b.add_argument("-t", "--tag", help="your image's name (a DNS label)")
    b.add_argument("-f", "--file", default="Dockerfile", help="the Dockerfile, in DIR")
    b.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--json", action="store_true", help="print the image as JSON")
    b.add_argument("dir", nargs="?", default=".", help="the build context")
    b.set_defaults(fn=build)
    p = img_sub.add_parser("import", help="import an OCI layout tar or `docker save` archive")
    p.add_argument("-t", "--tag", required=True, help="the image's name")
    p.add_argument("archive")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_import)
    p = img_sub.add_parser("ls", help="your images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_ls)
    p = img_sub.add_parser("rm", help="delete images (by id or name)")
    p.add_argument("image", nargs="+")
    p.set_defaults(fn=cmd_rm)
