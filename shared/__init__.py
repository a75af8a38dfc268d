"""Code every streamjobs service shares: contracts, Kafka and HTTP plumbing, settings, auth.

`__version__` is the installed package's version (pyproject.toml holds the number): the
`streamjobs` command, the OpenAPI and the AsyncAPI documents all print this one.
"""

from importlib.metadata import version

__version__ = version("streamjobs")
