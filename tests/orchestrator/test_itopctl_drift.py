"""The drift check and the no-op promotion, with real playbook runs (the local stand-in) and the collection's
release module reading each host's tree: a host switched or edited by hand is found by ``status --probe``, refuses a
promotion unless allowed with a reason (recorded), and a promotion of what a stage already runs is one short run."""

from __future__ import annotations

from pathlib import Path

import pytest
from itopctl.errors import ExitCode
from itopctl.probe import Drift, HostApp, StageProbe, compare
from itopctl.store import HostTree, utcnow
from itopctl_support import Project, make_project, seed_deployed

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """dev: two hosts with r1 (seeded, never read: no reference yet); the probe reads each host's directory."""
    project = make_project(tmp_path / "project", f"sqlite:///{tmp_path / 'state.db'}", {"dev": 2, "test": 1})
    project.edit_pipeline(
        "defaults:\n",
        f"ansible:\n  collections_path: {REPO / 'collections'}\ndefaults:\n"
        "  release_roots: {sample: '{{ lab_root }}/{{ inventory_hostname }}'}\n",
    )
    seed_deployed(project, "dev", "r1")
    for host in ("dev-1", "dev-2"):
        project.on_host(host, "r1", current="r1")
    return project


def runs(project: Project) -> list[str]:
    folder = project.root / "runs"
    # the runs, not the fact cache beside them (.facts)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def probe_json(project: Project) -> dict[str, object]:
    result = project.run("status", "--probe", "--stage", "dev", "--json")
    assert result.code == 0, result.err
    row: dict[str, object] = result.json()[0]
    return row


def test_a_no_op_promotion_is_one_short_run_that_confirms_the_hosts(project: Project) -> None:
    project.add("r2")
    assert project.run("deploy", "r2").code == 0
    with project.store() as store:
        trees = store.host_trees("dev")
    assert [(t.host, t.current_release) for t in trees] == [("dev-1", "r2"), ("dev-2", "r2")]
    assert all(str(t.tree_checksum).startswith("sha256:") for t in trees)
    assert trees[0].tree_checksum == trees[1].tree_checksum  # the same release tree on both hosts

    before = runs(project)
    again = project.run("deploy", "r2")
    assert again.code == ExitCode.OK, again.err
    assert "nothing to do: r2 already runs on dev, verified; confirmed on 2 host(s)" in again.out
    new_runs = sorted(set(runs(project)) - set(before))
    assert len(new_runs) == 1 and "-probe-" in new_runs[0], new_runs  # one read-only run, no phase
    assert len(project.run("history", "--json").json()) == 2  # nothing recorded

    seen = probe_json(project)
    drift = seen["drift"]
    assert isinstance(drift, dict)
    assert (drift["checked"], drift["drifted"]) == (True, [])


def test_a_hand_edit_is_drift_that_refuses_a_promotion_until_allowed_with_a_reason(project: Project) -> None:
    project.add("r2")
    project.add("r3")
    assert project.run("deploy", "r2").code == 0
    (project.lab_root / "dev-1/releases/r2/VERSION").write_text("patched by hand\n")

    text = project.run("status", "--probe", "--stage", "dev")
    assert "DRIFT on 1 root(s) since deployment #2" in text.out
    assert "DRIFT: dev-1/sample: the tree of r2 changed (edited by hand?)" in text.out

    for release in ("r2", "r3"):  # the no-op and a new release alike
        refused = project.run("deploy", release)
        assert refused.code == ExitCode.REFUSED, refused.out
        assert "DRIFT on 1 root(s)" in refused.err and "--allow-drift" in refused.err, refused.err
        assert "dev-1/sample: the tree of r2 changed" in refused.err
    assert project.current("dev-1") == project.current("dev-2") == "r2"
    assert len(project.run("history", "--json").json()) == 2  # a refusal changes and records nothing

    blank = project.run("deploy", "r3", "--allow-drift", "  ")
    assert blank.code == ExitCode.BAD_INPUT and "--allow-drift must say why" in blank.err

    allowed = project.run("deploy", "r3", "--allow-drift", "INC-42: hotfix applied by hand, now in r3")
    assert allowed.code == ExitCode.OK, allowed.err
    last = project.run("history", "--json", "--limit", "1").json()[0]
    assert last["result"] == "succeeded"
    assert last["drift_override"].startswith("INC-42: hotfix applied by hand, now in r3 (allowed by alice; dev-1/")
    assert "#3 went over drift: INC-42" in project.run("history").out
    seen = probe_json(project)  # the reference is what this deployment left: clean again
    assert seen["drift"]["drifted"] == [] and seen["drift"]["reference"] == 3  # type: ignore[index]


def test_a_manual_switch_is_drift_and_an_allowed_no_op_deploys_again(project: Project) -> None:
    project.add("r2")
    assert project.run("deploy", "r2").code == 0
    link = project.lab_root / "dev-2/current"
    link.unlink()
    link.symlink_to("releases/r1")  # someone switched dev-2 back by hand

    refused = project.run("deploy", "r2")
    assert refused.code == ExitCode.REFUSED
    assert "r2 is recorded as running on dev, but DRIFT" in refused.err
    assert "dev-2/sample: runs r1, itopctl left r2 (switched by hand?)" in refused.err

    repaired = project.run("deploy", "r2", "--allow-drift", "dev-2 switched back by hand during INC-7")
    assert repaired.code == ExitCode.OK, repaired.err
    assert project.current("dev-1") == project.current("dev-2") == "r2"
    last = project.run("history", "--json", "--limit", "1").json()[0]
    assert (last["kind"], last["release_id"], last["result"]) == ("promote", "r2", "succeeded")
    assert "dev-2/sample: runs r1" in last["drift_override"]


def test_no_reference_or_a_killed_deployment_is_not_drift(project: Project) -> None:
    # r1 was seeded without a run: nothing recorded, so the first promotion goes on and says why it did not check
    project.add("r2")
    first = project.run("deploy", "r2")
    assert first.code == 0, first.err
    assert "drift check on dev: nothing recorded for dev yet" in first.err
    # a deployment that recorded nothing after the reference (its itopctl was killed): the hosts may differ
    with project.store() as store:
        dep = store.start_deployment(
            kind="promote", release_id="r2", stage="dev", from_release="r1", who="x", now=utcnow()
        )
        store.finish_deployment(dep, result="abandoned", now=utcnow(), stage_state=None)
    (project.lab_root / "dev-1/releases/r2/VERSION").write_text("half done\n")
    seen = probe_json(project)
    assert seen["drift"]["checked"] is False  # type: ignore[index]
    assert "deployment #3 ended without recording" in seen["drift"]["notes"][0]  # type: ignore[index]


def _probe(*hosts: HostApp, unreachable: tuple[str, ...] = (), answered: tuple[str, ...] = ()) -> StageProbe:
    return StageProbe("prod", "run-1", hosts, unreachable, answered=answered or tuple(h.host for h in hosts))


def _ref(host: str, current: str | None, tree: str | None, app: str = "itop") -> HostTree:
    return HostTree("prod", host, app, current, tree, 7, "2026-12-01T00:00:00Z")


def test_compare_tells_drift_from_what_cannot_be_checked() -> None:
    reference = [_ref("web1", "r2", "sha256:aa"), _ref("web2", "r2", "sha256:aa"), _ref("web3", "r2", "sha256:aa"),
                 _ref("web4", "r2", "sha256:aa")]  # fmt: skip
    probe = _probe(
        HostApp("web1", "itop", "r2", "r1", tree="sha256:aa"),
        HostApp("web2", "itop", "r2", "r1", tree="sha256:bb"),
        HostApp("web5", "itop", "r2", None, tree="sha256:aa"),
        unreachable=("web3",),
        answered=("web1", "web2", "web5"),
    )
    drift = compare(reference, probe)
    assert drift.checked and drift.reference == 7
    assert drift.drifted == ("web2/itop: the tree of r2 changed (edited by hand?): checksum bb, recorded aa",)
    assert drift.notes == (
        "web3: unreachable, not checked",
        "web4: no longer in the inventory",
        "web5/itop: runs r2, never deployed there by itopctl (a new host?)",
    )
    assert drift.summary == "DRIFT on 1 root(s) since deployment #7"
    # a root removed on a host that still answers is drift; nothing recorded yet is not checked
    gone = compare([_ref("web1", "r2", "sha256:aa")], _probe(answered=("web1",)))
    assert gone.drifted == ("web1/itop: runs nothing, itopctl left r2 (switched by hand?)",)
    assert compare([], probe) == Drift(False, notes=("nothing recorded for prod yet (recorded at the end of each "
                                                     "deployment)",))  # fmt: skip
    assert compare(reference, _probe(*probe.hosts), unrecorded=9).checked is False


def _locked_roots(project: Project) -> list[str]:
    """The hosts whose root holds a release engine's host lock (its lock file)."""
    return sorted(p.parent.name for p in project.lab_root.glob("*/.deploy.lock"))


@pytest.mark.parametrize("closes", [True, False], ids=["closed-by-its-last-run", "closed-by-itopctl"])
def test_a_deployment_ends_with_its_host_locks_given_back_and_the_hosts_read(project: Project, closes: bool) -> None:
    """The last run closes the deployment (no run of itopctl's own after it); a playbook that does not close it gets
    itopctl's closing run. Either way no host lock is left and the drift reference is what the hosts run."""
    if not closes:
        (project.lab_root / "no-close").write_text("")
    project.add("r2")
    before = runs(project)
    done = project.run("deploy", "r2")
    assert done.code == ExitCode.OK, done.err
    kinds = [name.split("-")[1] for name in sorted(set(runs(project)) - set(before))]
    assert kinds == ["probe", "prepare", "switch", "switch", "verify"] + ([] if closes else ["unlock"]), kinds
    assert _locked_roots(project) == []
    with project.store() as store:
        trees = store.host_trees("dev")
        assert store.held_host_locks("dev") == {}
    assert [(t.host, t.current_release, t.deployment_id) for t in trees] == [("dev-1", "r2", 2), ("dev-2", "r2", 2)]

    before = runs(project)
    back = project.run("rollback", "dev", "--to", "r1")
    assert back.code == ExitCode.OK, back.err
    assert "dev rolled back from r2 to r1" in back.out
    kinds = [name.split("-")[1] for name in sorted(set(runs(project)) - set(before))]
    # one run, the verify in it, when the playbook verifies after a rollback: else a verify run and itopctl's close
    assert kinds == (["rollback"] if closes else ["rollback", "verify", "unlock"]), kinds
    assert project.current("dev-1") == project.current("dev-2") == "r1"
    assert _locked_roots(project) == []
    last = project.run("history", "--json", "--limit", "1").json()[0]
    assert (last["kind"], last["result"], last["phase"]) == ("rollback", "succeeded", "verify")
    assert sorted(last["switched_hosts"]) == ["dev-1", "dev-2"]
    with project.store() as store:
        assert [(t.current_release, t.deployment_id) for t in store.host_trees("dev")] == [("r1", 3), ("r1", 3)]
    assert probe_json(project)["drift"]["drifted"] == []  # type: ignore[index]


@pytest.mark.parametrize(
    ("marker", "said", "runs_on"),
    [
        ("fail-verify-r1-dev-2", "dev rolled back from r2 to r1, but verify failed (dev-2)", "r1"),
        ("fail-rollback-r1-dev-2", "rollback of dev to r1 failed (dev-2)", None),
    ],
    ids=["its-verify-fails", "the-rollback-fails"],
)
def test_a_rollback_in_one_run_tells_a_failed_verify_from_a_failed_rollback(
    project: Project, marker: str, said: str, runs_on: str | None
) -> None:
    project.add("r2")
    assert project.run("deploy", "r2").code == 0
    (project.lab_root / marker).write_text("")
    before = runs(project)
    back = project.run("rollback", "dev", "--to", "r1")
    assert back.code == ExitCode.FAILED, back.out
    assert said in back.out, back.out
    kinds = [name.split("-")[1] for name in sorted(set(runs(project)) - set(before))]
    assert kinds == ["rollback", "unlock"], kinds  # the failed run closed nothing: itopctl's close did
    assert _locked_roots(project) == []
    last = project.run("history", "--json", "--limit", "1").json()[0]
    status = project.run("status", "--json").json()
    dev = next(s for s in status if s["stage"] == "dev")
    if runs_on:  # rolled back everywhere: the stage runs the target, not verified
        assert sorted(last["switched_hosts"]) == ["dev-1", "dev-2"]
        assert (dev["current"], dev["health"]) == ("r1", "rolled back from r2; verify failed")
        assert last["phase"] == "verify"
    else:
        assert dev["current"] == "r2"
        assert last["phase"] == "rollback"
