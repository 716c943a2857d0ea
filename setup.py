# setuptools reads extension modules only from setup.py; the build logic lives in build_ext.py.
from setuptools import setup

from build_ext import extensions

setup(ext_modules=extensions())
