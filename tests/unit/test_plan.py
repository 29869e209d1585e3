"""Planning: diff desired against observed. Only changed services change."""

from __future__ import annotations

from agent.desired import parse_desired_state
from agent.plan import (
    ObservedContainer,
    effective_target,
    make_plan,
    previous_digests,
    repository_of,
    running_digest,
)
from agent.state import Change, ImageDigest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def c(service: str, digest: str | None, status: str = "running", n: int = 1,
      health: str | None = None) -> ObservedContainer:
    return ObservedContainer(
        service=service, container_id=f"{service}{n}{digest}", name=f"{service}-{n}",
        image_ref=f"a/{service}", digest=digest, status=status, health=health,
    )


def img(name: str, digest: str) -> ImageDigest:
    return ImageDigest(image=f"a/{name}", digest=digest)


# ------------------------------------------------------------------------- running_digest
def test_running_digest_is_the_digest_all_live_containers_share():
    assert running_digest([c("web", D1, n=1), c("web", D1, n=2)]) == D1


def test_running_digest_is_none_when_live_containers_disagree():
    assert running_digest([c("web", D1, n=1), c("web", D2, n=2)]) is None


def test_running_digest_ignores_exited_containers():
    assert running_digest([c("web", D1), c("web", D2, status="exited", n=2)]) == D1


def test_running_digest_counts_restarting_containers_as_live():
    assert running_digest([c("web", D1), c("web", D2, status="restarting", n=2)]) is None


def test_running_digest_of_no_live_container_is_none():
    assert running_digest([]) is None
    assert running_digest([c("web", D1, status="exited")]) is None


# ------------------------------------------------------------------------- make_plan
def test_only_services_whose_digest_differs_change():
    target = {"web": img("web", D2), "api": img("api", D1), "db": img("db", D1)}
    observed = {"web": [c("web", D1)], "api": [c("api", D1)], "db": [c("db", D1)]}
    known_good = {"web": img("web", D1), "api": img("api", D1), "db": img("db", D1)}
    plan = make_plan("rev2", target, observed, known_good)
    assert plan.changes == [Change(service="web", image="a/web", old=D1, new=D2)]
    assert plan.changed_services == ["web"]
    assert plan.unverified == []
    assert not plan.is_noop
    assert plan.revision == "rev2"
    assert plan.target == target


def test_everything_at_target_and_verified_is_a_noop():
    target = {"web": img("web", D1)}
    plan = make_plan("rev1", target, {"web": [c("web", D1)]}, {"web": img("web", D1)})
    assert plan.is_noop
    assert plan.changes == [] and plan.unverified == []


def test_service_not_running_is_a_change_from_nothing():
    plan = make_plan("rev1", {"web": img("web", D1)}, {}, {})
    assert plan.changes == [Change(service="web", image="a/web", old=None, new=D1)]


def test_service_running_target_but_never_verified_after_a_crash_is_unverified_not_changed():
    # The agent applied D2 and was killed before the health check recorded it known-good.
    target = {"web": img("web", D2), "api": img("api", D1)}
    observed = {"web": [c("web", D2)], "api": [c("api", D1)]}
    known_good = {"web": img("web", D1), "api": img("api", D1)}
    plan = make_plan("rev2", target, observed, known_good)
    assert plan.changes == []
    assert plan.unverified == ["web"]
    assert not plan.is_noop


def test_service_at_target_with_no_known_good_record_is_unverified():
    plan = make_plan("rev1", {"web": img("web", D1)}, {"web": [c("web", D1)]}, {})
    assert plan.unverified == ["web"]


def test_changes_are_sorted_by_service_name():
    target = {n: img(n, D2) for n in ("web", "api", "db")}
    plan = make_plan("r", target, {}, {})
    assert plan.changed_services == ["api", "db", "web"]


def test_mixed_digests_within_a_service_count_as_a_change():
    plan = make_plan("r", {"web": img("web", D2)},
                     {"web": [c("web", D1, n=1), c("web", D2, n=2)]}, {"web": img("web", D2)})
    assert plan.changes == [Change(service="web", image="a/web", old=None, new=D2)]


def test_observed_services_outside_the_target_are_left_alone():
    plan = make_plan("r", {"web": img("web", D1)},
                     {"web": [c("web", D1)], "other": [c("other", D3)]}, {"web": img("web", D1)})
    assert plan.is_noop
    assert "other" not in plan.target


# ------------------------------------------------------------------------- effective_target
def _desired():
    return parse_desired_state(
        f"version: 1\nservices:\n  web: {{image: a/web, digest: {D2}}}\n"
        f"  api: {{image: a/api, digest: {D2}}}\n".encode()
    )


def test_target_of_a_good_revision_is_the_desired_digests():
    target = effective_target(_desired(), {"web": img("web", D1)}, revision_failed=False)
    assert target == {"web": img("web", D2), "api": img("api", D2)}


def test_target_of_a_failed_revision_is_the_known_good_digests():
    known_good = {"web": img("web", D1), "api": img("api", D1)}
    assert effective_target(_desired(), known_good, revision_failed=True) == known_good


def test_failed_revision_keeps_desired_digest_where_nothing_is_known_good():
    target = effective_target(_desired(), {"web": img("web", D1)}, revision_failed=True)
    assert target == {"web": img("web", D1), "api": img("api", D2)}


def test_known_good_of_services_no_longer_desired_is_not_targeted():
    known_good = {"web": img("web", D1), "gone": img("gone", D1)}
    target = effective_target(_desired(), known_good, revision_failed=True)
    assert set(target) == {"web", "api"}


def test_failed_revision_running_known_good_plans_nothing():
    known_good = {"web": img("web", D1), "api": img("api", D1)}
    target = effective_target(_desired(), known_good, revision_failed=True)
    plan = make_plan("bad", target, {"web": [c("web", D1)], "api": [c("api", D1)]}, known_good)
    assert plan.is_noop


# ------------------------------------------------------------------------- previous_digests
def test_rollback_goes_to_known_good_when_it_differs_from_target():
    target = {"web": img("web", D3)}
    known_good = {"web": img("web", D1)}
    observed = {"web": [c("web", D2)]}  # an unverified earlier release runs
    plan = make_plan("r3", target, observed, known_good)
    assert previous_digests(plan, observed, known_good) == {"web": img("web", D1)}


def test_rollback_goes_to_what_ran_before_when_nothing_is_known_good():
    target = {"web": img("web", D2)}
    observed = {"web": [c("web", D1)]}
    plan = make_plan("r2", target, observed, {})
    assert previous_digests(plan, observed, {}) == {"web": img("web", D1)}


def test_rollback_of_a_service_that_did_not_run_is_none():
    target = {"web": img("web", D2)}
    plan = make_plan("r2", target, {}, {})
    assert previous_digests(plan, {}, {}) == {"web": None}


def test_unverified_service_rolls_back_to_known_good():
    target = {"web": img("web", D2)}
    observed = {"web": [c("web", D2)]}
    known_good = {"web": img("web", D1)}
    plan = make_plan("r2", target, observed, known_good)
    assert plan.unverified == ["web"]
    assert previous_digests(plan, observed, known_good) == {"web": img("web", D1)}


def test_previous_digests_cover_only_the_services_this_pass_touches():
    target = {"web": img("web", D2), "api": img("api", D1)}
    observed = {"web": [c("web", D1)], "api": [c("api", D1)]}
    known_good = {"web": img("web", D1), "api": img("api", D1)}
    plan = make_plan("r2", target, observed, known_good)
    assert set(previous_digests(plan, observed, known_good)) == {"web"}


def test_rollback_without_known_good_pairs_the_digest_with_the_repository_it_ran_from():
    """A release that moves web to another repository rolls back to the old repository's
    image, not to the old digest looked up in the new repository."""
    target = {"web": ImageDigest(image="ghcr.io/new/web", digest=D2)}
    old = ObservedContainer(service="web", container_id="w1", name="web-1",
                            image_ref=f"registry.old:5000/team/web@{D1}", digest=D1,
                            status="running", health=None)
    plan = make_plan("r2", target, {"web": [old]}, {})
    assert previous_digests(plan, {"web": [old]}, {}) == {
        "web": ImageDigest(image="registry.old:5000/team/web", digest=D1)}


def test_repository_of_strips_tag_and_digest_but_not_a_registry_port():
    assert repository_of("registry.test:5000/a/web:v1@" + D1) == "registry.test:5000/a/web"
    assert repository_of("registry.test:5000/a/web") == "registry.test:5000/a/web"
    assert repository_of("web:latest") == "web"
