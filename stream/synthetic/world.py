"""A synthetic job-recommendation world with a known GLMix ground truth.

Members and jobs carry feature bags (member: title, skills, seniority, location; job:
title, skills, company, seniority). Responses are drawn from a true GLMix model,

    logit P(click) = x·w + z_job·alpha_member + u_member·beta_job,

so learned coefficients can be compared with the truth. It includes the GLMix paper's
Alice/Annie case: pairs of members with identical features and opposite tastes, which
only a per-member coordinate can tell apart. Everything is drawn from one seeded
``numpy`` generator, so a seed fixes the world.

With ``emerging_terms`` the vocabulary grows during the stream, as real vocabularies do:
that many new skills and as many new companies debut at evenly spread points of the
stream, and ``late_entity_share`` of the members and jobs arrive later, carrying the
terms that have debuted by then (most of their skills and their company, drawn with a
long tail: the earliest new terms are the most common); the new terms' global effects
are ``emerging_effect_scale`` times as large as the others'.

With ``activity_effects`` every job is served as one of that many activity types (the
actor-verb-object type of a feed item: ``job-posted``, ``company-hiring``, ...), named in
the impression's ``context["activity_type"]``; each type adds its effect to the true
margin. No feature carries the type, so a type whose effect differs from the others'
is miscalibrated by every model: what observed/expected per activity type shows. Entities and impressions
follow their arrival, so a feature index taken from the start of the stream misses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from stream.config.exceptions import ConfigError

TITLES = ("engineer", "data-scientist", "designer", "product-manager", "sales", "recruiter", "analyst", "nurse")
SKILLS = (
    "python",
    "java",
    "sql",
    "ml",
    "statistics",
    "design",
    "figma",
    "negotiation",
    "crm",
    "sourcing",
    "excel",
    "care",
    "kubernetes",
    "spark",
    "writing",
    "leadership",
)
LOCATIONS = ("sf", "nyc", "london", "berlin", "bangalore", "remote")
COMPANIES = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
SENIORITY_LEVELS = 5
ACTIVITY_TYPES = (
    "job-posted",
    "company-hiring",
    "similar-members-applied",
    "skill-match",
    "recruiter-pick",
    "trending",
)

Feature = tuple[str, str, float]


@dataclass(frozen=True)
class WorldSpec:
    """Size and noise of a synthetic world. Rates are shares of the clean event counts.

    ``base_margin`` is the true global intercept (-1.5: about one click in six);
    ``member_bias_scale`` gives every member an intercept of its own (how much more than
    others it clicks, or rates highly); ``session_requests`` is the mean number of
    consecutive requests one member makes before another one comes (a ratings log,
    where most consecutive events are one user's, has about 9); ``concurrent_sessions``
    is how many members are in a session at once, each request going to one of them at
    random (a site at hundreds of events per second serves many members at a time, so
    one member's events are far apart even when the stream's are not).
    """

    seed: int = 7
    members: int = 200
    jobs: int = 100
    alice_annie_pairs: int = 2
    requests: int = 2000
    items_per_request: int = 5
    random_bucket_rate: float = 0.1
    apply_given_click: float = 0.3
    duplicate_rate: float = 0.02
    out_of_order_rate: float = 0.05
    late_rate: float = 0.01
    orphan_rate: float = 0.01
    malformed_rate: float = 0.0
    attribution_window_ms: int = 15 * 60 * 1000
    start_time_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    mean_request_gap_ms: int = 500
    mean_click_delay_ms: int = 30_000
    member_effect_scale: float = 1.0
    job_effect_scale: float = 0.7
    emerging_terms: int = 0
    late_entity_share: float = 0.5
    emerging_effect_scale: float = 3.0
    activity_effects: tuple[float, ...] = ()
    base_margin: float = -1.5
    member_bias_scale: float = 0.0
    session_requests: int = 1
    concurrent_sessions: int = 1

    def __post_init__(self) -> None:
        for name in (
            "members",
            "jobs",
            "requests",
            "items_per_request",
            "mean_request_gap_ms",
            "mean_click_delay_ms",
            "session_requests",
            "concurrent_sessions",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.alice_annie_pairs * 2 > self.members:
            raise ConfigError("alice_annie_pairs", "needs two members per pair")
        if self.items_per_request > self.jobs:
            raise ConfigError("items_per_request", "cannot exceed the number of jobs")
        if self.emerging_terms < 0:
            raise ConfigError("emerging_terms", f"must be >= 0, got {self.emerging_terms}")
        if len(self.activity_effects) > len(ACTIVITY_TYPES):
            raise ConfigError("activity_effects", f"at most {len(ACTIVITY_TYPES)} activity types")
        for name in (
            "random_bucket_rate",
            "apply_given_click",
            "duplicate_rate",
            "out_of_order_rate",
            "late_rate",
            "orphan_rate",
            "malformed_rate",
            "late_entity_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(name, f"must be a share in [0, 1], got {value}")


def ratings_like(seed: int = 12, requests: int = 40_000, members: int = 1000, items: int = 1500) -> WorldSpec:
    """A world shaped like a public ratings stream: one item per request, about half positive, per-member and
    per-item biases and tastes, members rating in sessions (about 9 consecutive events each), and a clean, ordered
    log whose labels come right after their impressions (a rating is known when it is given)."""
    return WorldSpec(
        seed=seed,
        members=members,
        jobs=items,
        requests=requests,
        items_per_request=1,
        mean_request_gap_ms=200,
        base_margin=-1.6,
        member_bias_scale=1.0,
        job_effect_scale=1.0,
        session_requests=9,
        mean_click_delay_ms=100,
        attribution_window_ms=2_000,
        duplicate_rate=0.0,
        out_of_order_rate=0.0,
        late_rate=0.0,
        orphan_rate=0.0,
    )


@dataclass(frozen=True)
class Entity:
    """A member or a job: its id and its feature bags of (name, term, value) triples."""

    entity_id: str
    bags: Mapping[str, tuple[Feature, ...]]


@dataclass
class GroundTruth:
    """The true model: global coefficients and per-entity random effects, by (name, term)."""

    global_coefficients: dict[tuple[str, str], float] = field(default_factory=dict)
    member_effects: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    job_effects: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)
    alice_annie: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict:
        """A JSON-ready form: coefficients as lists of {name, term, value}."""

        def ntv(coefs: Mapping[tuple[str, str], float]) -> list[dict]:
            return [{"name": n, "term": t, "value": v} for (n, t), v in sorted(coefs.items())]

        return {
            "global": ntv(self.global_coefficients),
            "member": {k: ntv(v) for k, v in sorted(self.member_effects.items())},
            "job": {k: ntv(v) for k, v in sorted(self.job_effects.items())},
            "alice_annie": [list(p) for p in self.alice_annie],
        }


INTERCEPT = ("(INTERCEPT)", "")


def _one_hot(name: str, term: str) -> tuple[Feature, ...]:
    return ((name, term, 1.0),)


def _member_bags(title: str, skills: list[str], seniority: int, location: str) -> dict[str, tuple[Feature, ...]]:
    return {
        "member_title": _one_hot("member_title", title),
        "member_skills": tuple(("member_skill", s, 1.0) for s in skills),
        "member_seniority": (("member_seniority", "", seniority / (SENIORITY_LEVELS - 1)),),
        "member_location": _one_hot("member_location", location),
    }


def _job_bags(title: str, skills: list[str], company: str, seniority: int) -> dict[str, tuple[Feature, ...]]:
    return {
        "job_title": _one_hot("job_title", title),
        "job_skills": tuple(("job_skill", s, 1.0) for s in skills),
        "job_company": _one_hot("job_company", company),
        "job_seniority": (("job_seniority", "", seniority / (SENIORITY_LEVELS - 1)),),
    }


def job_feature_keys() -> list[tuple[str, str]]:
    """Every (name, term) a job can carry: the member coordinate's feature space."""
    return (
        [("job_title", t) for t in TITLES]
        + [("job_skill", s) for s in SKILLS]
        + [("job_company", c) for c in COMPANIES]
        + [("job_seniority", "")]
    )


def member_feature_keys() -> list[tuple[str, str]]:
    """Every (name, term) a member can carry: the job coordinate's feature space."""
    return (
        [("member_title", t) for t in TITLES]
        + [("member_skill", s) for s in SKILLS]
        + [("member_location", c) for c in LOCATIONS]
        + [("member_seniority", "")]
    )


class World:
    """Members, jobs and the true model of one :class:`WorldSpec`."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng(spec.seed)
        self.emerging_skills = [f"new-skill-{k:03d}" for k in range(spec.emerging_terms)]
        self.emerging_companies = [f"new-company-{k:03d}" for k in range(spec.emerging_terms)]
        self.arrival: dict[str, float] = {}
        self.members = self._draw_members()
        self.jobs = self._draw_jobs()
        if spec.emerging_terms:
            self._make_late_arrivals()
        self.truth = self._draw_truth()
        types = np.random.default_rng([spec.seed, 4]).integers(len(spec.activity_effects) or 1, size=len(self.jobs))
        self.activity_type = {
            job.entity_id: ACTIVITY_TYPES[int(t)] for job, t in zip(self.jobs, types) if spec.activity_effects
        }

    def job_keys(self) -> list[tuple[str, str]]:
        """Every (name, term) a job of this world can carry (the member coordinate's feature space)."""
        return (
            job_feature_keys()
            + [("job_skill", s) for s in self.emerging_skills]
            + [("job_company", c) for c in self.emerging_companies]
        )

    def member_keys(self) -> list[tuple[str, str]]:
        """Every (name, term) a member of this world can carry (the job coordinate's feature space)."""
        return member_feature_keys() + [("member_skill", s) for s in self.emerging_skills]

    def _make_late_arrivals(self) -> None:
        """Let a share of members and jobs arrive during the stream, carrying the new terms debuted by then."""
        rng = np.random.default_rng([self.spec.seed, 3])
        n = self.spec.emerging_terms
        debut = (np.arange(n) + 1) / (n + 1)  # new term k debuts at this fraction of the stream

        def debuted(at: float, names: list[str], count: int) -> list[str]:
            ready = int(np.searchsorted(debut, at, side="right"))
            if not ready:
                return []
            weights = 1.0 / (np.arange(ready) + 1.0) ** 1.1  # a long tail: the first new terms are the most common
            picked = rng.choice(ready, size=min(count, ready), replace=False, p=weights / weights.sum())
            return [names[int(k)] for k in picked]

        def late(entities: list[Entity], prefix: str) -> list[Entity]:
            out = []
            for entity in entities:
                if entity.entity_id.startswith(("alice", "annie")) or rng.random() >= self.spec.late_entity_share:
                    out.append(entity)
                    continue
                at = float(rng.uniform(0.05, 1.0))
                self.arrival[entity.entity_id] = at
                bags = dict(entity.bags)
                skills_bag = f"{prefix}_skills"
                name = bags[skills_bag][0][0] if bags[skills_bag] else f"{prefix}_skill"
                kept = [f for f in bags[skills_bag] if rng.random() < 0.3]
                bags[skills_bag] = tuple(kept) + tuple((name, s, 1.0) for s in debuted(at, self.emerging_skills, 3))
                if prefix == "job":
                    company = debuted(at, self.emerging_companies, 1)
                    if company:
                        bags["job_company"] = _one_hot("job_company", company[0])
                out.append(Entity(entity.entity_id, bags))
            return out

        self.members = late(self.members, "member")
        self.jobs = late(self.jobs, "job")

    def _draw_skills(self, title_index: int) -> list[str]:
        # Skills cluster by title so that features correlate as they do in real profiles.
        k = int(self.rng.integers(2, 5))
        home = [SKILLS[(2 * title_index + j) % len(SKILLS)] for j in range(3)]
        extra = [str(s) for s in self.rng.choice(SKILLS, size=k, replace=False)]
        return sorted(set(home[: max(1, k - 1)] + extra[:2]))

    def _draw_members(self) -> list[Entity]:
        members = []
        for i in range(self.spec.members):
            t = int(self.rng.integers(len(TITLES)))
            bags = _member_bags(
                TITLES[t],
                self._draw_skills(t),
                int(self.rng.integers(SENIORITY_LEVELS)),
                str(self.rng.choice(LOCATIONS)),
            )
            members.append(Entity(f"m{i:06d}", bags))
        for p in range(self.spec.alice_annie_pairs):  # Annie is Alice's feature-for-feature twin
            alice = members[2 * p]
            members[2 * p] = Entity(f"alice-{p}", alice.bags)
            members[2 * p + 1] = Entity(f"annie-{p}", alice.bags)
        return members

    def _draw_jobs(self) -> list[Entity]:
        jobs = []
        for j in range(self.spec.jobs):
            t = int(self.rng.integers(len(TITLES)))
            bags = _job_bags(
                TITLES[t],
                self._draw_skills(t),
                str(self.rng.choice(COMPANIES)),
                int(self.rng.integers(SENIORITY_LEVELS)),
            )
            jobs.append(Entity(f"j{j:06d}", bags))
        return jobs

    def _draw_truth(self) -> GroundTruth:
        rng, spec = self.rng, self.spec
        truth = GroundTruth()
        keys = [INTERCEPT] + self.member_keys() + self.job_keys()
        w = rng.normal(0.0, 0.3, size=len(keys))
        w[0] = spec.base_margin
        if spec.emerging_terms:  # what the market moves to matters more than the long-known terms
            emerging = np.array([k[1].startswith("new-") for k in keys])
            w[emerging] *= spec.emerging_effect_scale
        truth.global_coefficients = dict(zip(keys, (float(v) for v in w)))
        job_keys = [INTERCEPT] + self.job_keys()
        biases = np.random.default_rng([spec.seed, 5]).normal(0.0, spec.member_bias_scale, size=len(self.members))
        for member, bias in zip(self.members, biases):
            alpha = rng.normal(0.0, 0.35 * spec.member_effect_scale, size=len(job_keys))
            alpha[0] += bias  # some members simply click (or rate highly) more
            own_title = member.bags["member_title"][0][1]
            alpha[job_keys.index(("job_title", own_title))] += 1.0 * spec.member_effect_scale
            truth.member_effects[member.entity_id] = dict(zip(job_keys, (float(v) for v in alpha)))
        for p in range(spec.alice_annie_pairs):
            alice, annie = f"alice-{p}", f"annie-{p}"
            liked, disliked = self.truth_liked_title(p), TITLES[(p + 1) % len(TITLES)]
            for who, sign in ((alice, 1.0), (annie, -1.0)):
                effects = truth.member_effects[who]
                effects[("job_title", liked)] = 2.0 * sign
                effects[("job_title", disliked)] = -2.0 * sign
            truth.alice_annie.append((alice, annie))
        member_keys = [INTERCEPT] + self.member_keys()
        for job in self.jobs:
            beta = rng.normal(0.0, 0.35 * spec.job_effect_scale, size=len(member_keys))
            beta[0] = rng.normal(0.0, 0.8 * spec.job_effect_scale)  # some jobs are simply more attractive
            truth.job_effects[job.entity_id] = dict(zip(member_keys, (float(v) for v in beta)))
        return truth

    @staticmethod
    def truth_liked_title(pair: int) -> str:
        """The job title Alice of ``pair`` loves and her twin Annie dislikes."""
        return TITLES[pair % len(TITLES)]

    def true_margin(self, member: Entity, job: Entity) -> float:
        """The true logit of a click for this pair: global + member effect + job effect."""
        t = self.truth
        margin = t.global_coefficients[INTERCEPT]
        if self.activity_type:
            margin += self.spec.activity_effects[ACTIVITY_TYPES.index(self.activity_type[job.entity_id])]
        alpha = t.member_effects[member.entity_id]
        beta = t.job_effects[job.entity_id]
        margin += alpha[INTERCEPT] + beta[INTERCEPT]
        for bag in member.bags.values():
            for name, term, value in bag:
                margin += value * (t.global_coefficients[(name, term)] + beta[(name, term)])
        for bag in job.bags.values():
            for name, term, value in bag:
                margin += value * (t.global_coefficients[(name, term)] + alpha[(name, term)])
        return margin
