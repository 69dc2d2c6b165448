"""The campaign file: a base stack, factors, repetitions, a seed; expanded into points.

Every point is checked with the same validation as the stack file and the command line
(:meth:`ExperimentConfig.with_overrides`) before the first point runs, so a typo in the last
level of the last factor is refused up front, naming the campaign key, instead of an hour in.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workloads.base.errors import UnknownKeyError
from workloads.describe.config import ConfigError, ExperimentConfig, load_stack
from workloads.describe.runsize import estimate_run_s
from workloads.describe.scenario import FIELDS
from workloads.describe.schema import CAMPAIGN, check_path, hint, nearest

PLACES = ("lab", "azure")
LAB_BALANCERS = ("ipvs", "nftables", "haproxy")
# short names a campaign may use for the keys people vary most; anything else is "section.key"
ALIASES = {
    "scheduler": "balancer.scheduler", "cpus": "brokers.cpus", "memoryMb": "brokers.memoryMb",
    "brokerCpus": "brokers.cpus", "brokerMemoryMb": "brokers.memoryMb", "logTypes": "brokers.logTypes",
} | {k: f"scenario.{k}" for k in FIELDS}
TOP_KEYS = tuple(k.name for k in CAMPAIGN)


class CampaignError(ValueError):
    """The campaign file is wrong; the message names the key (``factors.publishers[2]``)."""


@dataclass(frozen=True)
class Point:
    """One run of the matrix: a configuration (factor levels) and a repetition."""

    point_id: str
    config_id: str
    levels: dict[str, Any]  # factor name (as written) -> level
    rep: int
    overrides: dict[str, Any]  # config key ("scenario.qos", "topology") -> value
    balancer: str | None  # lab balancer kind, None: the lab's default

    def to_dict(self) -> dict[str, Any]:
        return {"point_id": self.point_id, "config_id": self.config_id, "levels": self.levels, "rep": self.rep,
                "overrides": self.overrides, "balancer": self.balancer}


@dataclass
class Campaign:
    name: str
    stack: str
    project_dir: Path
    place: str
    repetitions: int
    seed: int
    fixed: dict[str, Any]
    factors: dict[str, list[Any]]
    balancer: str | None
    compare: list[str]
    vm: bool = False
    capacity: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    base: ExperimentConfig | None = None

    def config_key(self, factor: str) -> str:
        return ALIASES.get(factor, factor)

    def configurations(self) -> list[dict[str, Any]]:
        """Every combination of factor levels, in the file's order."""
        names = list(self.factors)
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(self.factors[n] for n in names))]

    def overrides_of(self, levels: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
        over = {self.config_key(k): v for k, v in self.fixed.items() if k != "balancer"}
        balancer = self.balancer
        for k, v in levels.items():
            if k == "balancer":
                balancer = v
            else:
                over[self.config_key(k)] = v
        return over, balancer

    def points(self) -> list[Point]:
        out = []
        for levels in self.configurations():
            cid = config_id(levels)
            over, bal = self.overrides_of(levels)
            for rep in range(1, self.repetitions + 1):
                out.append(Point(f"{cid}-r{rep}", cid, levels, rep, over, bal))
        return out

    def order(self) -> list[Point]:
        """The matrix in a randomized order (seeded): drift in the machine over the campaign then
        falls on every configuration alike instead of on whichever ran last."""
        pts = self.points()
        random.Random(self.seed).shuffle(pts)
        return pts

    def validate_point(self, overrides: Mapping[str, Any], where: str) -> ExperimentConfig:
        assert self.base is not None
        try:
            return self.base.with_overrides(overrides)
        except ConfigError as exc:
            raise CampaignError(f"{where}: {exc}") from None

    def estimate_s(self, cfg: ExperimentConfig, own_boot: bool = True) -> float:
        """A point's expected wall time; in the micro-VM slowed by the emulation, plus a boot of
        its own unless it shares the boot of a whole campaign (``campaign run`` boots once)."""
        return estimate_run_s(cfg, self.vm, own_boot)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stack": self.stack, "project_dir": str(self.project_dir), "place": self.place,
                "repetitions": self.repetitions, "seed": self.seed, "set": self.fixed, "factors": self.factors, "balancer": self.balancer,
                "compare": self.compare, "vm": self.vm, "capacity": self.capacity}


def config_id(levels: Mapping[str, Any]) -> str:
    """A readable, file-system safe and stable name for a configuration."""
    text = "-".join(f"{k.removeprefix('scenario.')}={_short(v)}" for k, v in levels.items()) or "base"
    safe = "".join(c if c.isalnum() or c in "=-_." else "_" for c in text)
    if len(safe) > 80:
        safe = safe[:60] + "-" + hashlib.sha1(safe.encode()).hexdigest()[:8]
    return safe


def _short(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "+".join(map(str, v))
    return str(v)


def _mapping(doc: Any, key: str) -> dict[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise CampaignError(f"{key}: must be a mapping, got {doc!r}")
    return dict(doc)


def _check_key(key: str, where: str) -> None:
    """A ``set`` or ``factors`` key: a short name, or a stack key the schema knows at any depth
    (``brokers.cpus``, ``balancer.healthCheck.type``); a misspelling is refused with the nearest."""
    if key == "balancer" or key in ALIASES:
        return
    try:
        check_path(key)
    except UnknownKeyError as exc:
        # without a section a short name was meant (cpu -> cpus); with one, the schema's suggestion
        near = nearest(key, list(ALIASES)) if "." not in key else None
        why = f"did you mean {near}?" if near else exc.allowed
        raise CampaignError(f"{where}: unknown key {key!r}; {why}") from None


def load_campaign(path: Path, project_dir: Path) -> Campaign:
    """Parse and validate a campaign file; every point's configuration is checked here."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise CampaignError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise CampaignError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CampaignError(f"{path}: not valid YAML ({exc})") from None
    doc = _mapping(doc, str(path))
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise CampaignError(f"{unknown[0]}: not a campaign key; {hint(unknown[0], TOP_KEYS)}")
    stack = doc.get("stack")
    if not isinstance(stack, str) or not stack:
        raise CampaignError("stack: required, the base stack (reads Pulumi.<stack>.yaml)")
    pdir = Path(doc["projectDir"]) if doc.get("projectDir") else project_dir
    if not pdir.is_absolute():
        pdir = (Path(path).parent / pdir).resolve()
    try:
        base = load_stack(stack, pdir)
    except ConfigError as exc:
        raise CampaignError(f"stack: {exc}") from None
    place = doc.get("place", "lab")
    if place not in PLACES:
        raise CampaignError(f"place: {place!r} must be one of {', '.join(PLACES)}")
    reps = doc.get("repetitions", 1)
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise CampaignError(f"repetitions: {reps!r} must be a whole number >= 1")
    seed = doc.get("seed", 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CampaignError(f"seed: {seed!r} must be a whole number")
    fixed = _mapping(doc.get("set"), "set")
    for k in fixed:
        _check_key(k, f"set.{k}")
    factors_raw = _mapping(doc.get("factors"), "factors")
    factors: dict[str, list[Any]] = {}
    for k, levels in factors_raw.items():
        _check_key(k, f"factors.{k}")
        if not isinstance(levels, list) or not levels:
            raise CampaignError(f"factors.{k}: must be a non-empty list of levels, got {levels!r}")
        if len({json.dumps(v, sort_keys=True) for v in levels}) != len(levels):
            raise CampaignError(f"factors.{k}: levels repeat ({levels!r}); repeat with repetitions instead")
        if k in fixed:
            raise CampaignError(f"factors.{k}: also fixed under set; a key is either fixed or a factor")
        factors[k] = levels
    balancer = doc.get("balancer", fixed.get("balancer"))
    bal_levels = [("balancer", balancer)] if balancer is not None else []
    bal_levels += [(f"factors.balancer[{i}]", v) for i, v in enumerate(factors.get("balancer", []))]
    for where, v in bal_levels:
        if place == "azure":
            raise CampaignError(f"{where}: Azure stacks always run IPVS; the lab balancer is not a factor there")
        if v not in LAB_BALANCERS:
            raise CampaignError(f"{where}: {v!r} must be one of {', '.join(LAB_BALANCERS)}")
    compare_raw = doc.get("compare", [])
    compare = [compare_raw] if isinstance(compare_raw, str) else compare_raw
    if not isinstance(compare, list) or any(c not in factors for c in compare):
        raise CampaignError(f"compare: {compare_raw!r} must name factors of this campaign ({', '.join(factors) or 'none'})")
    vm = doc.get("vm", False)
    if not isinstance(vm, bool):
        raise CampaignError(f"vm: {vm!r} must be true or false")
    camp = Campaign(name=str(doc.get("name") or Path(path).stem), stack=stack, project_dir=pdir, place=place, repetitions=reps, seed=seed,
                    fixed=fixed, factors=factors, balancer=balancer, compare=compare or [n for n in factors if n not in LOAD_KEYS][:1],
                    vm=vm, capacity=_mapping(doc.get("capacity"), "capacity"), source=text, base=base)
    # the fixed settings, then every level alone, so the message names the key at fault
    fixed_over = {camp.config_key(kk): vv for kk, vv in fixed.items() if kk != "balancer"}
    camp.validate_point(fixed_over, "set")
    for k, levels in factors.items():
        if k == "balancer":
            continue
        for i, v in enumerate(levels):
            camp.validate_point(fixed_over | {camp.config_key(k): v}, f"factors.{k}[{i}]")
    for p in camp.points():
        if p.rep == 1:
            camp.validate_point(p.overrides, f"point {p.config_id}")
    return camp


LOAD_KEYS = ("publishers", "subscribers", "intervalMs", "messages", "payloadBytes", "scenario.publishers", "scenario.subscribers",
             "scenario.intervalMs", "scenario.messages", "scenario.payloadBytes")
