"""A stand-in for a heavy business application, and the jobs the benchmarks run.

Importing it does what a real web/business application does at import time:
it loads a data stack (numpy, pandas), an ORM (SQLAlchemy), validation
(pydantic), templating (Jinja2), an HTTP client (requests), i18n (Babel) and
the standard-library modules such apps pull in, then declares its own
models: ORM-mapped classes, pydantic schemas and compiled templates. An
interpreter that imported rq and then this module is about 125 MB resident,
90 MB more than with rq alone (memory.py measures it and writes it to its
JSON), much of it Python objects, which are what copy-on-write sharing and
reference counting are about.

The jobs are addressed by name (``benchmarks.heavy_app.noop``), so whoever
enqueues them never needs to import this module.

Do not add upper-case module globals: `rq worker -c benchmarks.heavy_app`
(how the benchmarks preload it into rq's own workers) reads those as settings.
"""

from __future__ import annotations

import asyncio  # noqa: F401 - imported for its weight, as an application would
import csv  # noqa: F401
import decimal  # noqa: F401
import email.mime.multipart  # noqa: F401
import http.server  # noqa: F401
import logging.handlers  # noqa: F401
import sqlite3  # noqa: F401
import ssl  # noqa: F401
import time
import urllib.request  # noqa: F401
import uuid  # noqa: F401
import xml.dom.minidom  # noqa: F401
import zipfile  # noqa: F401
from typing import Any

import babel.dates
import babel.numbers  # noqa: F401
import jinja2
import numpy  # noqa: F401
import pandas  # noqa: F401
import pydantic
import requests  # noqa: F401
import sqlalchemy
import sqlalchemy.orm

_models = 60  # ORM models, each with a pydantic schema
_fields = 12  # columns per model
_column_types = (lambda: sqlalchemy.String(140), sqlalchemy.Integer, sqlalchemy.Float, sqlalchemy.Text)
_python_types = (str, int, float, str)


class Base(sqlalchemy.orm.DeclarativeBase):
    pass


def _declare_model(index: int) -> type[Base]:
    attrs: dict[str, Any] = {
        "__tablename__": f"doc_{index}",
        "id": sqlalchemy.Column(sqlalchemy.Integer, primary_key=True),
    }
    for field in range(_fields):
        column_type = _column_types[field % len(_column_types)]()
        attrs[f"field_{field}"] = sqlalchemy.Column(column_type, nullable=True, doc=f"Field {field} of document {index}")
    return type(f"Doc{index}", (Base,), attrs)


def _declare_schema(index: int) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {
        f"field_{field}": (_python_types[field % len(_python_types)] | None, None) for field in range(_fields)
    }
    return pydantic.create_model(f"Doc{index}Schema", **fields)


def _compile_template(environment: jinja2.Environment) -> jinja2.Template:
    cells = "".join(f"<td>{{{{ row.field_{field} }}}}</td>" for field in range(_fields))
    return environment.from_string("{% for row in rows %}<tr>" + cells + "</tr>{% endfor %}")


models = [_declare_model(i) for i in range(_models)]
sqlalchemy.orm.configure_mappers()
schemas = [_declare_schema(i) for i in range(_models)]
_environment = jinja2.Environment(autoescape=True)
templates = [_compile_template(_environment) for _ in range(_models // 4)]


def noop() -> None:
    """The cheapest job: what the pool itself costs per job."""


def sleep(seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return seconds
