"""Test-session setup shared by every test folder.

The torchvision fix must run before anything imports invokeai or diffusers (see
`dype._torchvision_compat`): the CPU torch wheel meets a torchvision build it does not match.
"""

from dype._torchvision_compat import import_torchvision

import_torchvision()
