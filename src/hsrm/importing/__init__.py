"""``hsrm import`` and ``hsrm select`` (being split into modules; everything is in ``readers``)."""

from hsrm.importing.readers import *  # noqa: F403
from hsrm.importing.readers import __all__  # noqa: F401
