"""The portal's language and time zone: which the viewer gets, the catalogs, the time filter.

- **Language**: ``?lang=ko|en`` (remembered in the ``nuri_lang`` cookie), else the cookie,
  else the best of the browser's ``Accept-Language`` (q-values), else English. The catalogs
  are gettext ``.po`` files under ``web/locale/<lang>/LC_MESSAGES/portal.po``, read at import
  into dict-backed translations: no compile step, nothing a fresh machine lacks. English is
  the source language (its catalog is the msgids themselves). The CLI stays English.
- **Time zone**: ``?tz=<IANA zone>`` (remembered in ``nuri_tz``), else the cookie, else the
  language's default (Asia/Seoul for Korean, UTC for English). A zone ``zoneinfo`` does not
  know is ignored. ``localtime`` shows a moment in that zone inside a ``<time>`` element whose
  ``datetime`` and hover title are UTC.

Thread safety: the Jinja environment is shared, so nothing per request is installed on it.
The gettext callables read the viewer's ``Choice`` from the render context (``ui``) or, for
macros imported without context, from a context variable set just before each render (one
render runs in one thread or task, so neither leaks into another request).
"""

from __future__ import annotations

import ast
import gettext
import re
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Request, Response
from jinja2 import Environment, pass_context
from jinja2.runtime import Context
from markupsafe import Markup
from starlette.datastructures import URL

LOCALES = ("en", "ko")
DEFAULT_LOCALE = "en"
LANG_COOKIE = "nuri_lang"
TZ_COOKIE = "nuri_tz"
COOKIE_MAX_AGE_S = 365 * 24 * 3600
DEFAULT_ZONES = {"en": "UTC", "ko": "Asia/Seoul"}
# What the language switch calls each language: in itself, so a reader finds their own.
LANGUAGE_NAMES = {"en": "English", "ko": "한국어"}
LOCALE_DIR = Path(__file__).resolve().parents[2] / "web" / "locale"
DOMAIN = "portal"


# -- catalogs --------------------------------------------------------------------------------


class Catalog(gettext.NullTranslations):
    """A gettext translation read from a ``.po`` file: msgid → msgstr, untranslated (empty)
    entries fall back to the msgid as gettext does."""

    def __init__(self, messages: dict[str, str] | None = None) -> None:
        super().__init__()
        self.messages = dict(messages or {})

    def gettext(self, message: str) -> str:
        return self.messages.get(message) or message

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str:
        # Korean has one plural form; an entry keyed by the singular serves both.
        found = self.messages.get(msgid1)
        if found:
            return found
        return msgid1 if n == 1 else msgid2


_PO_LINE = re.compile(r'^(msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+(".*")\s*$')


def parse_po(text: str) -> dict[str, str]:
    """A ``.po`` file's translations (msgid → msgstr; a plural entry by its singular, with its
    first form). The header entry (empty msgid) and fuzzy entries are left out."""
    messages: dict[str, str] = {}
    entry: dict[str, str] = {}
    fuzzy = False
    key: str | None = None

    def finish() -> None:
        msgid = entry.get("msgid", "")
        msgstr = entry.get("msgstr", entry.get("msgstr[0]", ""))
        if msgid and msgstr and not fuzzy and "msgctxt" not in entry:
            messages[msgid] = msgstr

    def has_msgstr() -> bool:
        return any(k.startswith("msgstr") for k in entry)

    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            # A comment starts the next entry; its flags belong to that entry.
            if has_msgstr():
                finish()
                entry, key, fuzzy = {}, None, False
            if line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            continue
        found = _PO_LINE.match(line)
        if found:
            word, quoted = found.groups()
            if word in ("msgid", "msgctxt") and has_msgstr():
                finish()
                entry, fuzzy = {}, False
            key = word
            entry[key] = _unquote(quoted, number)
        elif line.startswith('"') and key is not None:
            entry[key] += _unquote(line, number)
        else:
            raise ValueError(f"line {number} of the catalog is not gettext: {raw!r}")
    if entry:
        finish()
    return messages


def _unquote(quoted: str, number: int) -> str:
    # A .po string is a C string literal; Python's literal syntax reads the same escapes.
    value = ast.literal_eval(quoted)
    if not isinstance(value, str):
        raise ValueError(f"line {number} of the catalog is not a string")
    return value


def load_catalog(locale: str) -> Catalog:
    path = LOCALE_DIR / locale / "LC_MESSAGES" / f"{DOMAIN}.po"
    return Catalog(parse_po(path.read_text(encoding="utf-8")) if path.exists() else {})


CATALOGS = {locale: load_catalog(locale) for locale in LOCALES}


# -- the viewer's choice ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Choice:
    """The language and time zone one request is shown in."""

    lang: str
    zone_name: str
    catalog: Catalog
    switch: tuple[tuple[str, str, str, bool], ...]  # (lang, name, href, current)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.zone_name)


def accepted_language(header: str | None) -> str | None:
    """The portal language the ``Accept-Language`` header prefers most (q-values honoured,
    ``q=0`` refuses), or None when it names none of them."""
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        primary = tag.strip().split("-")[0].lower()
        if primary in LOCALES and 0 < quality <= 1:
            ranked.append((-quality, index, primary))
    return min(ranked)[2] if ranked else None


def zone_named(name: str | None) -> str | None:
    """``name`` when it is an IANA zone this machine knows, else None (never raises)."""
    if not name or len(name) > 64 or not re.fullmatch(r"[A-Za-z0-9_+\-/]+", name):
        return None
    if name.startswith("/") or ".." in name:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None
    return name


def choice_of(request: Request) -> Choice:
    """The viewer's language and zone (worked out once per request)."""
    cached = getattr(request.state, "portal_ui", None)
    if isinstance(cached, Choice):
        return cached
    asked = request.query_params.get("lang")
    kept = request.cookies.get(LANG_COOKIE)
    lang = (
        (asked if asked in LOCALES else None)
        or (kept if kept in LOCALES else None)
        or accepted_language(request.headers.get("accept-language"))
        or DEFAULT_LOCALE
    )
    zone = (
        zone_named(request.query_params.get("tz"))
        or zone_named(request.cookies.get(TZ_COOKIE))
        or DEFAULT_ZONES[lang]
    )
    # The switch keeps the page (a GET) and its query; a page answering a POST has no
    # address to come back to, so its switch goes to the jobs list.
    base = (
        request.url
        if request.method == "GET"
        else request.url.replace(path="/portal/jobs", query="")
    )
    switch = tuple(
        (code, LANGUAGE_NAMES[code], _link(base.include_query_params(lang=code)), code == lang)
        for code in LOCALES
    )
    choice = Choice(lang, zone, CATALOGS[lang], switch)
    request.state.portal_ui = choice
    return choice


def catalog_for(request: Request) -> Catalog:
    """The viewer's catalog, for a fixed sentence the portal's code chooses (a confirmation's
    question, a count after a bulk change). Never for text a user typed."""
    return choice_of(request).catalog


def _link(url: URL) -> str:
    # The path and query only: a link never names a host.
    return f"{url.path}?{url.query}"


def remember(request: Request, response: Response) -> None:
    """Keep a choice made with ``?lang=`` or a valid ``?tz=`` for the next pages."""
    secure = request.url.scheme == "https"
    asked = request.query_params.get("lang")
    if asked in LOCALES:
        response.set_cookie(
            LANG_COOKIE,
            asked,
            max_age=COOKIE_MAX_AGE_S,
            path="/portal",
            samesite="lax",
            secure=secure,
            httponly=True,
        )
    zone = zone_named(request.query_params.get("tz"))
    if zone:
        response.set_cookie(
            TZ_COOKIE,
            zone,
            max_age=COOKIE_MAX_AGE_S,
            path="/portal",
            samesite="lax",
            secure=secure,
            httponly=True,
        )


# -- templates -------------------------------------------------------------------------------

_RENDERING: ContextVar[Choice | None] = ContextVar("portal_ui", default=None)
_ENGLISH = Choice(DEFAULT_LOCALE, DEFAULT_ZONES[DEFAULT_LOCALE], CATALOGS[DEFAULT_LOCALE], ())


def context_of(request: Request) -> dict[str, Any]:
    """The Jinja context processor: the viewer's choice as ``ui`` (and for this render)."""
    choice = choice_of(request)
    _RENDERING.set(choice)
    return {"ui": choice}


def _current(context: Context) -> Choice:
    found = context.get("ui")
    if isinstance(found, Choice):
        return found
    return _RENDERING.get() or _ENGLISH


@pass_context
def _gettext(context: Context, message: str) -> str:
    return _current(context).catalog.gettext(message)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int) -> str:
    return _current(context).catalog.ngettext(singular, plural, n)


@pass_context
def localtime(context: Context, value: datetime | str | None) -> Markup | str:
    """A moment in the viewer's zone, to the second, with UTC in ``datetime`` and on hover."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:  # the database's timestamps are UTC
        moment = moment.replace(tzinfo=UTC)
    utc = moment.astimezone(UTC)
    local = utc.astimezone(_current(context).zone)
    # Markup.format escapes its arguments.
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
        local.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )


@pass_context
def translated(context: Context, value: object) -> str:
    """A text the code chose from a fixed set (a flash message, a state word), translated.
    Unlike ``_``, the result is plain text (escaped as usual) and never %-formatted."""
    return _current(context).catalog.gettext(str(value))


def install(env: Environment) -> None:
    """Give ``env`` gettext (``_``, ``gettext``, ``ngettext``, ``{% trans %}``) that follows
    each render's viewer, and the ``localtime`` and ``translated`` filters."""
    env.add_extension("jinja2.ext.i18n")
    env.install_gettext_callables(  # type: ignore[attr-defined]
        _gettext, _ngettext, newstyle=True
    )
    env.filters["localtime"] = localtime
    env.filters["translated"] = translated
