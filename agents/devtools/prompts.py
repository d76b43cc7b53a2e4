"""The demo's questions: per-agent templates x slots, and how often the response cache answers.

Each agent kind has a few *templates* ("How do I return {item}?"), each with a weight and slots
filled uniformly from word lists. A template's distinct prompts are the product of its slot
sizes: the frequently asked ones have a handful (a support FAQ, a re-run review of the same
diff), the long tail has hundreds of thousands (an order number, a date, a column and a table),
so it practically never repeats. A request picks a template by weight, then each slot.

How many answers come from the cache (what :func:`expected_hit_rate` computes). One distinct
prompt ``i`` is asked as a Poisson stream of rate ``r_i = rate * w_t / C_t`` (``rate`` the agent's
requests/s, ``w_t`` its template's share, ``C_t`` the template's distinct prompts). Its first
request is a miss and stores the answer for ``ttl`` seconds; every request within them is a hit
(a hit does not extend the entry); the next request after them is a miss again. Over a run of
``D`` seconds from a cold cache the expected number of misses of that prompt is

    M = 1 - exp(-r D)                                   when D <= ttl (nothing expired yet)
    M ~ 1 - exp(-r ttl) + (D - ttl) / (ttl + 1 / r)     after that (renewal cycles: a wait of
                                                        1/r for the next ask, then ttl of hits)

and its hits are ``r D - M``. Summed over every prompt, an agent's hit rate is
``1 - sum(M) / (rate * D)``, and the demo's is the request-weighted mean over the agents (an
agent with ``cache_ttl_s: 0`` never hits). As ``D`` grows this tends to the steady state
``r ttl / (1 + r ttl)`` per prompt: about 1 for a frequently asked one, about 0 for the tail. So
the demo's hit rate is roughly the share of frequently asked questions in the traffic, reached
within a few minutes, whatever the TTLs (30 minutes to a day).

At the demo's default 3 requests/s with the reference mix and the TTLs of demo/breakwater.yaml
this gives 32% after 5 minutes, 36% after 10, 40% after an hour and 41.5% in the steady state
(:func:`demo_hit_rate`; the test pins it between 30% and 45%). Session follow-ups and queued
requests sent with ``Cache-Control: no-cache`` miss on top of that, which the loadgen keeps
small (docs/BENCHMARKS.md, "Issue 12: demo traffic", has the measured figure).
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field

_FIELDS = string.Formatter()


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    weight: float
    slots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = {name for _, name, _, _ in _FIELDS.parse(self.text) if name}
        missing = names - set(self.slots)
        if missing:
            raise ValueError(f"template {self.text!r}: no slot for {', '.join(sorted(missing))}")
        if self.weight <= 0:
            raise ValueError(f"template {self.text!r}: weight must be > 0, got {self.weight}")
        for name, values in self.slots.items():
            if not values:
                raise ValueError(f"template {self.text!r}: slot {name!r} is empty")

    @property
    def size(self) -> int:
        """How many distinct prompts this template makes."""
        return math.prod(len(v) for v in self.slots.values()) if self.slots else 1

    def render(self, rng: random.Random) -> str:
        # Slots in sorted order: the same seed gives the same prompts on every Python.
        values = {
            name: self.slots[name][rng.randrange(len(self.slots[name]))]
            for name in sorted(self.slots)
        }
        return self.text.format(**values)


@dataclass(frozen=True, slots=True)
class PromptPool:
    templates: tuple[Template, ...]

    def __post_init__(self) -> None:
        if not self.templates:
            raise ValueError("a prompt pool needs at least one template")

    @property
    def size(self) -> int:
        return sum(t.size for t in self.templates)

    def pick(self, rng: random.Random) -> str:
        # Exactly two kinds of draw per request (template, then one per slot), so a seed
        # reproduces the sequence.
        template = rng.choices(self.templates, [t.weight for t in self.templates])[0]
        return template.render(rng)

    def shares(self) -> list[tuple[float, int]]:
        """(probability of one of the template's prompts, how many prompts) per template."""
        total = sum(t.weight for t in self.templates)
        return [(t.weight / total / t.size, t.size) for t in self.templates]


def _numbers(count: int, start: int = 1000) -> tuple[str, ...]:
    return tuple(str(start + 7919 * i % (count * 10)) for i in range(count))


_ITEMS = ("running shoes", "a rain jacket", "a gift card", "headphones", "a sofa", "a desk lamp")
_COUNTRIES = ("Canada", "Mexico", "the UK", "Germany", "Japan", "Australia", "Brazil", "India")
_ORDERS = _numbers(5000, 40_000)
_ISSUES = (
    "arrived damaged",
    "is missing a part",
    "is the wrong size",
    "never arrived",
    "was charged twice",
    "shows delivered but is not here",
)
_LANGS = ("Python", "TypeScript", "Go", "Java", "Rust", "SQL")
_SNIPPETS = (
    "def add(a, b): return a - b",
    "cursor.execute('SELECT * FROM t WHERE id=' + user_id)",
    "for i in range(len(xs)): print(xs[i])",
    "if not os.path.exists(p): open(p, 'w')",
    "const total = items.reduce((a, b) => a + b.price)",
    "except Exception: pass",
    "password = request.GET['password']",
    "time.sleep(5)  # wait for the job",
)
_FILES = tuple(
    f"{d}/{f}"
    for d in ("api", "billing", "auth", "jobs", "web")
    for f in ("views.py", "models.py", "tasks.py", "utils.py", "client.ts", "handler.go")
)
_PRS = _numbers(4000, 1200)
_METRICS = (
    "weekly active users",
    "revenue",
    "churn",
    "average order value",
    "refund rate",
    "signups",
)
_DIMENSIONS = ("country", "plan", "channel", "product category", "device", "cohort month")
_PERIODS = ("the last 8 weeks", "last quarter", "this year", "last month", "the last 30 days")
_TABLES = (
    "orders",
    "events",
    "subscriptions",
    "invoices",
    "sessions",
    "tickets",
    "refunds",
    "users",
)
_COLUMNS = ("created_at", "amount_usd", "status", "country", "plan", "user_id", "channel", "sku")
_DATES = tuple(f"2025-{m:02d}-{d:02d}" for m in range(1, 13) for d in (1, 8, 15, 22))
_PRODUCTS = (
    "waterproof jacket",
    "trail shoes",
    "smart kettle",
    "standing desk",
    "noise-cancelling headphones",
    "yoga mat",
    "espresso grinder",
    "travel backpack",
)
_AUDIENCES = ("new customers", "returning customers", "developers", "small businesses", "students")
_TONES = ("playful", "confident", "warm", "technical", "minimal")
_WORDS = ("50", "100", "150", "200")
_PLANS = ("Starter", "Team", "Business", "Enterprise")
_SEATS = tuple(str(n) for n in (3, 5, 10, 25, 50, 100, 250, 1000))
_DEVICES = ("laptop", "VPN", "email", "Wi-Fi", "printer", "SSO login", "2FA token")
_EMPLOYEES = _numbers(3000, 10_000)
_POLICIES = (
    "parental leave",
    "sick leave",
    "travel expenses",
    "remote work",
    "the home-office stipend",
    "overtime",
    "public holidays",
)
_PHRASES = (
    "Thank you for your patience.",
    "Your order has shipped.",
    "We have issued a full refund.",
    "Please restart the app and try again.",
    "Your subscription renews on the first of the month.",
    "Our team will reply within one business day.",
)
_LANGUAGES = ("French", "German", "Spanish", "Japanese", "Portuguese", "Italian", "Dutch", "Korean")
_DOCS = _numbers(2000, 500)
_TEAMS = ("platform", "billing", "mobile", "growth", "data", "support tooling")
_MEETINGS = _numbers(5000, 70_000)
_VERSIONS = tuple(f"{a}.{b}.{c}" for a in (3, 4) for b in range(10) for c in range(10))

POOLS: dict[str, PromptPool] = {
    "customer-support": PromptPool(
        (
            Template("How do I return {item}?", 0.14, {"item": _ITEMS}),
            Template("Do you ship to {country}?", 0.12, {"country": _COUNTRIES}),
            Template("How long does a refund take?", 0.08),
            Template("My discount code does not work.", 0.06),
            Template("Can I change my shipping address after ordering?", 0.05),
            Template("Where is my order #{order}?", 0.25, {"order": _ORDERS}),
            Template(
                "My order #{order} {issue}. What can you do?",
                0.30,
                {"order": _ORDERS, "issue": _ISSUES},
            ),
        )
    ),
    "code-review": PromptPool(
        (
            # Re-runs: the same small diff reviewed again after a force-push or a CI retry.
            Template(
                "Review this {lang} change: {snippet}",
                0.45,
                {"lang": _LANGS[:3], "snippet": _SNIPPETS},
            ),
            Template(
                "Review PR #{pr} ({file}): {snippet}",
                0.55,
                {"pr": _PRS, "file": _FILES, "snippet": _SNIPPETS},
            ),
        )
    ),
    "data-analyst": PromptPool(
        (
            Template(
                "{metric} by {dimension} for {period}?",
                0.42,
                {"metric": _METRICS[:4], "dimension": _DIMENSIONS[:3], "period": _PERIODS[:2]},
            ),
            Template(
                "Write SQL: {metric} from {table} grouped by {column} since {date}.",
                0.58,
                {"metric": _METRICS, "table": _TABLES, "column": _COLUMNS, "date": _DATES},
            ),
        )
    ),
    "content-writer": PromptPool(
        (
            Template(
                "Write a {words}-word {tone} product description of our {product} for {audience}.",
                0.6,
                {"words": _WORDS, "tone": _TONES, "product": _PRODUCTS, "audience": _AUDIENCES},
            ),
            Template(
                "Five newsletter subject lines for the {product} launch on {date}.",
                0.4,
                {"product": _PRODUCTS, "date": _DATES},
            ),
        )
    ),
    "sales-assistant": PromptPool(
        (
            Template("What does the {plan} plan cost?", 0.5, {"plan": _PLANS}),
            Template(
                "Quote for {seats} seats on {plan}, billed yearly?",
                0.5,
                {"seats": _SEATS, "plan": _PLANS},
            ),
        )
    ),
    "it-helpdesk": PromptPool(
        (
            Template("My {device} does not work.", 0.5, {"device": _DEVICES}),
            Template(
                "Employee {employee}: reset my {device}.",
                0.5,
                {"employee": _EMPLOYEES, "device": _DEVICES},
            ),
        )
    ),
    "hr-policy": PromptPool(
        (
            Template("What is our policy on {policy}?", 0.7, {"policy": _POLICIES}),
            Template(
                "Employee {employee} asks about {policy}.",
                0.3,
                {"employee": _EMPLOYEES, "policy": _POLICIES},
            ),
        )
    ),
    "translator": PromptPool(
        (
            Template(
                "Translate to {language}: {phrase}",
                0.5,
                {"language": _LANGUAGES, "phrase": _PHRASES},
            ),
            Template(
                "Translate help article #{doc} to {language}.",
                0.5,
                {"doc": _DOCS, "language": _LANGUAGES},
            ),
        )
    ),
    "meeting-summarizer": PromptPool(
        (
            Template(
                "Summarise the {team} meeting #{meeting} of {date}.",
                1.0,
                {"team": _TEAMS, "meeting": _MEETINGS, "date": _DATES},
            ),
        )
    ),
    "release-notes": PromptPool(
        (
            Template(
                "Release notes for {version} ({team}).", 1.0, {"version": _VERSIONS, "team": _TEAMS}
            ),
        )
    ),
}

DEFAULT_POOL = PromptPool((Template("Summarise ticket #{n}.", 1.0, {"n": _numbers(5000)}),))

# The demo's cache TTLs (demo/breakwater.yaml, cache_ttl_s), for the arithmetic and its test.
DEMO_TTLS: dict[str, float] = {
    "customer-support": 3600,
    "code-review": 600,
    "data-analyst": 1800,
    "content-writer": 0,
    "sales-assistant": 3600,
    "it-helpdesk": 7200,
    "hr-policy": 86400,
    "translator": 86400,
    "meeting-summarizer": 0,
    "release-notes": 3600,
}


def pool_for(agent: str) -> PromptPool:
    return POOLS.get(agent, DEFAULT_POOL)


def expected_misses(rate: float, ttl: float, duration: float) -> float:
    """Expected cache misses of one prompt asked at ``rate``/s over ``duration`` s from cold."""
    if rate <= 0 or duration <= 0:
        return 0.0
    if ttl <= 0:
        return rate * duration
    if duration <= ttl:
        return -math.expm1(-rate * duration)
    return -math.expm1(-rate * ttl) + (duration - ttl) / (ttl + 1 / rate)


def expected_hit_rate(
    pool: PromptPool, *, rate: float, ttl: float, duration: float | None
) -> float:
    """An agent's expected share of cache hits (``duration`` None: the steady state)."""
    if rate <= 0 or ttl <= 0:
        return 0.0
    if duration is None:
        return sum(p * size * (rate * p * ttl) / (1 + rate * p * ttl) for p, size in pool.shares())
    misses = sum(size * expected_misses(rate * p, ttl, duration) for p, size in pool.shares())
    return 1 - misses / (rate * duration)


def demo_hit_rate(
    mix: Mapping[str, float],
    *,
    rate: float,
    duration: float | None,
    ttls: Mapping[str, float] = DEMO_TTLS,
) -> float:
    """The demo's expected share of cache hits at ``rate`` requests/s split by ``mix``."""
    total = sum(mix.values())
    return sum(
        weight
        / total
        * expected_hit_rate(
            pool_for(agent), rate=rate * weight / total, ttl=ttls.get(agent, 0), duration=duration
        )
        for agent, weight in mix.items()
    )
