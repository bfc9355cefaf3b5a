"""The test suite. A package, so that `tests.helpers` and `tests.process_group` import the same
way from any working directory (pytest puts the repository root on sys.path for a package) and
from the benches, and no `tests` package installed elsewhere can stand in for them."""
