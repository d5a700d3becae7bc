import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"', Path(__file__).with_name("xend_ext").joinpath("__init__.py")
                    .read_text()).group(1)

setup(
    name="xend-ext",
    version=VERSION,
    description="A Xen-API server with CPU pools, VM groups, scheduling domains and a runtime policy manager",
    python_requires=">=3.11",
    # only the server and its class declarations: bench/, schemas/ and tests/ stay in the source tree
    packages=find_packages(include=["xend_ext", "xend_ext.*", "xenapi_classes", "xenapi_classes.*"]),
    install_requires=[
        "httptools>=0.6",
        "defusedxml>=0.7",
        "lxml>=5.0",
        "requests>=2.31",
        "uvloop>=0.19; sys_platform != 'win32'",
    ],
    extras_require={
        "libvirt": ["libvirt-python>=9.0,<13"],
        "cluster": ["aetcd>=1.0"],  # a pool of hosts on etcd v3 (serve --cluster)
        "test": ["pytest>=8", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "hypothesis>=6.100", "xenapi>=24.0",
                 "trustme>=1.1", "ruff>=0.5", "aetcd>=1.0"],
    },
    entry_points={
        "console_scripts": [
            "xend-ext=xend_ext.main:main",
            "xm=xend_ext.cli.main:main",
        ]
    },
)
