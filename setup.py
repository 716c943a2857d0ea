# setuptools reads extension modules only from setup.py; the build logic lives in build_ext.py.
# pip runs this file with the project root missing from sys.path, so add it.
import os
import sys

from setuptools import setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build_ext import cmdclass, extensions  # noqa: E402

setup(ext_modules=extensions(), cmdclass=cmdclass())
