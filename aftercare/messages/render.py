"""Render patient messages from the templates folder: SMS (GSM-7, bounded length) and email.

Templates run in Jinja's immutable sandbox with StrictUndefined, so a template can neither reach
Python internals nor silently print an empty gap for a misspelt variable. Every failure, whatever
Jinja called it, becomes one TemplateError that names the file (and the line when known).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment

from aftercare.messages.gsm import non_gsm_characters, sms_encoding, to_gsm7

# Errors a template can raise while it is evaluated: Jinja's own, and the Python errors an
# expression such as ``{{ day_number / 0 }}`` or ``{{ first_name + 1 }}`` produces.
_RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError)
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_EXTRA_BLANK_LINES = re.compile(r"\n{3,}")
# ``2 ** n`` with more bits than this is refused (a reminder needs no such number).
_MAX_POWER_BITS = 4096


class _MessageSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, which already caps ``range()`` at MAX_RANGE items, plus the
    same cap on the two operators that build something huge from a few characters of template:
    ``'x' * 10**9`` (a gigabyte) and ``2 ** 10**9`` (a number that never finishes)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for items, times in ((left, right), (right, left)):
                if (
                    isinstance(items, str | list | tuple)
                    and isinstance(times, int)
                    and len(items) * times > MAX_RANGE
                ):
                    raise SecurityError(f"a repetition longer than {MAX_RANGE} is not allowed")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and abs(left) > 1
            and right * left.bit_length() > _MAX_POWER_BITS
        ):
            raise SecurityError("the result of ** would be too large")
        return super().call_binop(context, operator, left, right)


class TemplateError(ValueError):
    """A template that cannot be rendered or whose output is unusable, with where and why."""

    def __init__(self, file: str, reason: str, line: int | None = None) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.reason = reason
        self.line = line


@dataclass(frozen=True)
class RenderedSms:
    body: str
    encoding: str
    segments: int


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


class MessageRenderer:
    """Renders ``sms/<name>.txt`` and ``email/<name>.{subject.txt,txt,html}`` under a folder."""

    def __init__(self, templates_dir: Path, *, max_sms_segments: int = 2) -> None:
        self.templates_dir = templates_dir
        self.max_sms_segments = max_sms_segments
        # Absolute, so that the files named in errors match Jinja's traceback frames whatever
        # the working directory.
        self._root = os.path.abspath(templates_dir)
        # Building the environment touches no file: templates are read on first use.
        self._env = _MessageSandbox(
            loader=jinja2.FileSystemLoader(self._root),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(["html"], default_for_string=False),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Placeholder text has no place in a patient's message, and lipsum(10**6) is megabytes.
        del self._env.globals["lipsum"]

    def render_sms(self, template: str, context: Mapping[str, object]) -> RenderedSms:
        """The SMS body for ``template``; refused unless it is GSM-7 within the segment limit.

        Text values in the context are brought into GSM-7 first (Zoë becomes Zoe), so only the
        template's own wording can push a message into UCS-2.
        """
        name = f"sms/{template}.txt"
        safe = {k: to_gsm7(v) if isinstance(v, str) else v for k, v in context.items()}
        body = _collapse_sms(self._render(name, safe))
        if not body:
            raise TemplateError(self._path(name), "SMS body is empty")
        encoding = sms_encoding(body)
        if encoding.encoding != "GSM-7" or encoding.segments > self.max_sms_segments:
            reason = (
                f"SMS body is {encoding.encoding}, {encoding.units} units in "
                f"{encoding.segments} segment(s); it must be GSM-7 in at most "
                f"{self.max_sms_segments} segment(s)"
            )
            odd = non_gsm_characters(body)
            if odd:
                reason += " (not GSM-7: " + ", ".join(f"{c!r} U+{ord(c):04X}" for c in odd) + ")"
            raise TemplateError(self._path(name), reason)
        return RenderedSms(body=body, encoding=encoding.encoding, segments=encoding.segments)

    def render_email(self, template: str, context: Mapping[str, object]) -> RenderedEmail:
        """The subject (one line), plain-text and HTML parts of the email for ``template``."""
        subject_name = f"email/{template}.subject.txt"
        # Collapsing every whitespace run also keeps a newline in a value out of the header.
        subject = " ".join(self._render(subject_name, context).split())
        if not subject:
            raise TemplateError(self._path(subject_name), "subject is empty")
        text_name, html_name = f"email/{template}.txt", f"email/{template}.html"
        text = _tidy_text(self._render(text_name, context))
        html = self._render(html_name, context).strip() + "\n"
        for part_name, part in ((text_name, text), (html_name, html)):
            if not part.strip():
                raise TemplateError(self._path(part_name), "email part is empty")
        return RenderedEmail(subject=subject, text=text, html=html)

    def _path(self, name: str) -> str:
        return os.path.join(self._root, *name.split("/"))

    def _render(self, name: str, context: Mapping[str, object]) -> str:
        try:
            return self._env.get_template(name).render(dict(context))
        except jinja2.TemplateSyntaxError as exc:
            file = os.path.abspath(exc.filename) if exc.filename else self._path(exc.name or name)
            raise TemplateError(file, exc.message or "syntax error", exc.lineno) from exc
        except jinja2.TemplateNotFound as exc:
            raise self._error(name, exc, f"template not found: {exc.name}") from exc
        except SecurityError as exc:
            raise self._error(name, exc, f"refused by the sandbox: {exc}") from exc
        except jinja2.UndefinedError as exc:
            raise self._error(name, exc, f"undefined: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise TemplateError(self._path(name), f"not valid UTF-8 ({exc.reason})") from exc
        except _RENDER_ERRORS as exc:
            raise self._error(name, exc, f"{type(exc).__name__}: {exc}") from exc

    def _error(self, name: str, exc: BaseException, reason: str) -> TemplateError:
        """A TemplateError at the innermost template frame of ``exc`` (an included or parent
        template may be the real culprit), else at the template that was asked for."""
        file, line = self._path(name), None
        tb: TracebackType | None = exc.__traceback__
        while tb is not None:
            frame_file = os.path.abspath(tb.tb_frame.f_code.co_filename)
            # Jinja rewrites tracebacks so that template frames carry the template's file name.
            if frame_file.startswith(self._root + os.sep):
                file, line = frame_file, tb.tb_lineno
            tb = tb.tb_next
        return TemplateError(file, reason, line)


def _collapse_sms(text: str) -> str:
    """One line per paragraph: lines inside a paragraph join with single spaces, and paragraphs
    (split by a blank line in the template) are kept apart by a single newline."""
    paragraphs = (" ".join(p.split()) for p in _BLANK_LINE.split(text.strip()))
    return "\n".join(p for p in paragraphs if p)


def _tidy_text(text: str) -> str:
    """Trailing spaces removed, at most one blank line in a row, one final newline."""
    lines = "\n".join(line.rstrip() for line in text.strip().splitlines())
    return _EXTRA_BLANK_LINES.sub("\n\n", lines) + "\n"


@dataclass(frozen=True)
class CheckReport:
    """The outcome of rendering a set of templates: faults (empty when all is well) and, for
    each SMS that rendered, its body, encoding and segment count."""

    faults: list[str] = field(default_factory=list)
    sms: dict[str, RenderedSms] = field(default_factory=dict)
    email: dict[str, RenderedEmail] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.faults


def check_templates(
    renderer: MessageRenderer, template_names: Iterable[str], context: Mapping[str, object]
) -> CheckReport:
    """Render the SMS and the email of every named template with ``context``, collecting every
    fault rather than stopping at the first."""
    report = CheckReport()
    for name in dict.fromkeys(template_names):
        try:
            report.sms[name] = renderer.render_sms(name, context)
        except TemplateError as exc:
            report.faults.append(str(exc))
        try:
            report.email[name] = renderer.render_email(name, context)
        except TemplateError as exc:
            report.faults.append(str(exc))
    return report


@lru_cache(maxsize=1)
def _inline_environment() -> _MessageSandbox:
    env = _MessageSandbox(undefined=jinja2.StrictUndefined, autoescape=False)
    del env.globals["lipsum"]
    return env


@lru_cache(maxsize=256)
def _inline_template(source: str) -> jinja2.Template:
    return _inline_environment().from_string(source)


def render_inline(source: str, context: Mapping[str, object], *, where: str) -> str:
    """A short template written in a regimen file (a calendar event's summary or description),
    rendered in the same sandbox as the message templates; a fault names ``where``."""
    try:
        rendered = _inline_template(source).render(dict(context))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(where, exc.message or "syntax error") from exc
    except SecurityError as exc:
        raise TemplateError(where, f"refused by the sandbox: {exc}") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(where, f"undefined: {exc}") from exc
    except _RENDER_ERRORS as exc:
        raise TemplateError(where, f"{type(exc).__name__}: {exc}") from exc
    return " ".join(rendered.split())
