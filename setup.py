"""Packaging for mozagent: one console script, ``mozagent``."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "mozagent" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="mozagent",
    version=VERSION,
    description="Configuration agent for OpenStack web platform instances: "
    "ZooKeeper app data and Heat SoftwareDeployments applied with puppet.",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="MPL-2.0",
    python_requires=">=3.11",
    # The agent only: mozagent_dev (test servers) and tests/ stay in the
    # checkout, so an image carries no ZooKeeper or Heat stand-in
    # (tests/test_packaging.py checks the wheel's file list).
    packages=find_packages(include=["mozagent", "mozagent.*"]),
    # The warm puppet runner is Ruby, because puppet is (mozagent/apply/warm.py).
    package_data={"mozagent.apply": ["warm_runner.rb"]},
    install_requires=[
        "kazoo>=2.9",
        "PyYAML>=6.0",
        "tenacity>=9.2",
        "structlog>=23.1",
    ],
    extras_require={
        # Heat SoftwareDeployments: os-collect-config's collectors (a library
        # here, imported lazily), keystoneauth1 for HEAT_SIGNAL/ZAQAR_SIGNAL.
        # An extra, not a dependency: 62 packages, ~117 MiB installed (the rest
        # of mozagent needs 5 MiB), none of it used by a ZooKeeper-only host.
        # A heat: config without it exits 2 at start, naming this extra.
        "heat": ["os-collect-config>=14.1", "keystoneauth1>=5.0", "requests>=2.28"],
        # setuptools: tests/test_packaging.py builds the wheel offline, with
        # the venv's setuptools, which has bdist_wheel built in from 70.1.
        "test": [
            "pytest>=7.4",
            "pytest-timeout>=2.2",
            "ruff>=0.4",
            "hypothesis>=6.80",
            "setuptools>=70.1",
        ],
    },
    entry_points={"console_scripts": ["mozagent = mozagent.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Systems Administration",
    ],
)
