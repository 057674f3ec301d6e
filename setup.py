"""Ship the repository's templates/ and knowledge/ folders inside the wheel as promptkit/_data."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the folders from the repository
            return
        for folder in ("templates", "knowledge"):
            target = Path(self.build_lib) / "promptkit" / "_data" / folder
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / folder, target)


setup(cmdclass={"build_py": BuildWithData})
