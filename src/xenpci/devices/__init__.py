"""xenpci.devices: device models (layer 6).

Importing the package registers the ``model:NAME`` device source scheme
(see :mod:`xenpci.devices.catalog`).
"""

from xenpci.devices import catalog as catalog
