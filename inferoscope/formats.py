"""The original library's ``inferoscope.formats`` import path: strict RFC 3339 date-times."""

from .validation.rfc3339 import is_rfc3339_date_time

is_rfc3339_datetime = is_rfc3339_date_time

__all__ = ["is_rfc3339_datetime"]
