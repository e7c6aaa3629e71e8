"""Open pools of names and values for the training facts.

With only phrasing.toml's few dozen cities, jobs and pet names, a model can answer a training fact by
picking the likeliest member of a small known set, and it did: it almost never answered an eval-only
value it had read, and nearly half its wrong answers were training values ("Vienna", "librarian")
(`python -m bench.fact_errors docs/eval/r2`). Training values are therefore drawn from thousands of real
ones (Faker's lists of jobs, cities, first and last names, common words, CSS colour names), which no prior
can guess: the answer has to come from the memory. Eval values stay the
toml pools' eval-only quarter, so evaluations stay comparable, and no eval value ever enters training.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Iterable

_WORD = re.compile(r"[A-Za-z][a-z]+(?:[ -][A-Z]?[a-z]+)?")  # one or two plain ASCII words
_CITY_LOCALES = ("de_DE", "de_AT", "de_CH", "en_IN", "en_BD", "id_ID", "pt_PT", "ro_RO", "sv_SE", "fr_DZ",
                 "da_DK", "fi_FI", "it_IT", "nl_NL", "cs_CZ", "hr_HR", "sl_SI")
_PER_LOCALE = 300
_NAME_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "sv_SE", "pt_PT", "pl_PL")


def _provider(kind: str, locale: str | None = None) -> type:
    """Faker's Provider class of `kind` (and `locale`): its class attributes are the lists."""
    import faker.providers  # here, not at the top: only training builds fact values

    mod = f"{faker.providers.__name__}.{kind}" + (f".{locale}" if locale else "")
    return importlib.import_module(mod).Provider


def _plain(values: Iterable[str]) -> set[str]:
    return {v for v in values if _WORD.fullmatch(v)}


@functools.cache
def open_pools() -> dict[str, tuple[str, ...]]:
    """{field: sorted values} for 'city', 'job', 'pet_name', 'last' and 'color' (imports Faker once)."""
    cities: set[str] = set()
    for loc in _CITY_LOCALES:
        mine = sorted(_plain(getattr(_provider("address", loc), "cities", ())))
        cities |= set(mine[:: max(1, len(mine) // _PER_LOCALE)])  # ~300 each: no country dominates (it_IT lists 16k)
    first: set[str] = set()
    last: set[str] = set()
    for loc in _NAME_LOCALES:
        p = _provider("person", loc)
        first |= _plain(getattr(p, "first_names", ()))
        last |= _plain(getattr(p, "last_names", ()))
    jobs = {j.lower() for j in _plain(_provider("job", "en_US").jobs)}
    words = {w.capitalize() for w in _plain(_provider("lorem", "en_US").word_list) if len(w) >= 4}
    colors = {c.lower() for c in _provider("color").all_colors if re.fullmatch(r"[A-Z][a-z]+", c)}
    return {"city": tuple(sorted(cities)), "job": tuple(sorted(jobs)), "pet_name": _pet_names(first, words),
            "last": tuple(sorted(last)), "color": tuple(sorted(colors))}


def _pet_names(first: set[str], words: set[str]) -> tuple[str, ...]:
    """Pets are called like people ("Lars") or like things ("Chair", "Season"): a thousand first names and
    every common English word of four letters or more (Faker's lorem list, ~800), so the word-like names
    the eval asks ("Dumpling") are not a kind of answer training never showed (r19 answered pet questions
    with person-like names)."""
    people = sorted(first)
    return tuple(sorted(set(people[:: max(1, len(people) // 1000)]) | words))


def article(word: str) -> str:
    """'an astronomer', 'a pilot' (by the first letter; good enough for job titles)."""
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word
