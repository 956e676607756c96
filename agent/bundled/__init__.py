"""Files shipped inside the package: the demo's captures and the example configuration.

Each is a symlink to its source of truth at the top of the checkout (``pcaps/``,
``deploy/``); building the wheel or sdist copies the file itself, so an installed
package carries the same bytes (tests/install checks the wheel against the sources).
Read them with ``importlib.resources.files("agent.bundled")``.
"""
