"""The Dockerfile builds what requirements.txt names: a path there (the queue provider) is copied into the image
before requirements.txt is installed. Astro Runtime's ONBUILD steps would install it first, so the image is the
-base one, without them."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "RUN /usr/local/bin/install-python-dependencies"


def path_requirements(requirements: str) -> list[str]:
    """The local folders a requirements file installs (``./folder[extra]`` lines)."""
    return [re.sub(r"\[.*\]$", "", line.strip())[2:].rstrip("/") for line in requirements.splitlines()
            if line.strip().startswith("./")]


def copied_before_install(dockerfile: str, folder: str) -> bool:
    lines = [line.strip() for line in dockerfile.splitlines()]
    install = lines.index(INSTALL)
    return any(re.fullmatch(rf"COPY (--chown=\S+ )?{re.escape(folder)}/? {re.escape(folder)}/?", line)
               for line in lines[:install])


def test_the_image_is_astro_runtime_without_onbuild_steps_and_installs_requirements_itself() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = [line for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert froms == ["FROM astrocrpublic.azurecr.io/runtime:3.3-2-base"]
    assert INSTALL in dockerfile and "RUN /usr/local/bin/install-system-packages" in dockerfile


def test_every_folder_requirements_txt_installs_is_copied_before_the_install() -> None:
    folders = path_requirements((ROOT / "requirements.txt").read_text())
    assert folders == ["providers/event-streams"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert [f for f in folders if not copied_before_install(dockerfile, f)] == []
    # and the check itself: the same Dockerfile with the COPY after the install fails it
    moved = dockerfile.replace("COPY --chown=astro:0 providers/event-streams providers/event-streams\n", "")
    assert not copied_before_install(moved + "COPY providers/event-streams providers/event-streams\n", folders[0])
