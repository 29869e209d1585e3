"""init: a stack brought up by hand with plain `docker compose up -d` is adopted: init
writes a desired-state.yml from what runs (a locally built image named as not manageable),
it validates, and the first pass on it recreates nothing."""

from __future__ import annotations

import subprocess
import textwrap

import rig


def test_init_from_a_running_stack_validates_and_the_first_pass_recreates_nothing(
        harness, capsys):
    h = harness
    reg = h.reg
    h.client.images.pull(f"{reg}/e2e/web", tag="v1")
    h.client.images.get(f"{reg}/e2e/web:v1").tag("gitops-e2e-local", tag="init")
    try:
        (h.project.project_dir / "compose.yml").write_text(textwrap.dedent(f"""\
            services:
              web:
                image: {reg}/e2e/web:v1
                stop_grace_period: 1s
              api:
                image: {reg}/e2e/api:v1
                stop_grace_period: 1s
              side:
                image: {reg}/e2e/side@{h.images['side']}
                stop_grace_period: 1s
              local:
                image: gitops-e2e-local:init
                stop_grace_period: 1s
            """))
        subprocess.run([*h.compose_cmd, "--project-name", h.project.name,
                        "--project-directory", str(h.project.project_dir), "up", "-d"],
                       check=True, capture_output=True, timeout=240)
        ids = {s: sorted(c.id for c in h.containers(s)) for s in ("web", "api", "side", "local")}
        out = h.project.root / "desired-state.yml"
        capsys.readouterr()
        r = h.cli("init", "--project-dir", str(h.project.project_dir),
                  "--name", h.project.name, "--out", str(out))
        assert r.code == 0
        err = capsys.readouterr().err
        assert "local: image gitops-e2e-local:init has no registry digest" in err
        text = out.read_text()
        assert "# not managed: local:" in text
        assert f"image: {reg}/e2e/web\n    digest: {h.images['web-v1']}" in text
        assert f"image: {reg}/e2e/api\n    digest: {h.images['api-v1']}" in text
        assert "\n  local:" not in text
        # refuses to overwrite without --force
        assert h.cli("init", "--project-dir", str(h.project.project_dir),
                     "--name", h.project.name, "--out", str(out)).code == 2
        assert h.cli("validate", str(out)).code == 0
        h.commit(text, "adopt the running stack")
        first = h.sync()
        assert first.code == 0, first.logs
        assert first.summary()["changed"] == []
        assert {s: sorted(c.id for c in h.containers(s))
                for s in ("web", "api", "side", "local")} == ids
        again = h.sync()
        assert again.code == 0 and again.summary()["outcome"] == "no-op", again.logs
        capsys.readouterr()
        assert h.cli("diff", "--exit-code").code == 0
        assert h.cli("status").code == 0
    finally:
        h.teardown()
        rig.remove_local_image(h.client, "gitops-e2e-local:init")
