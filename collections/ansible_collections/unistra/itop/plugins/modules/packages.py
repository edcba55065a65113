#!/usr/bin/python
# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: packages
short_description: Debian packages present, asking dpkg before apt
version_added: 0.1.0
description:
  - Makes sure Debian packages are installed, as M(ansible.builtin.apt) with O(ansible.builtin.apt#module:state=present)
    does, without its cost when nothing is missing.
  - M(ansible.builtin.apt) opens the whole APT cache, about half a second, to find that the packages are there. This
    action first asks dpkg's database (C(dpkg-query -W), milliseconds) and runs M(ansible.builtin.apt) only when a
    package is not installed and configured (C(ii)), or when a name is more than a plain package name (a version, an
    architecture, a pattern).
  - Every role of the collection installs its packages with it.
author:
  - Université de Strasbourg, DNUM (@unistra)
attributes:
  action:
    support: full
    description: An action plugin; it runs M(ansible.builtin.apt) on the host when a package is missing.
  check_mode:
    support: full
    description: dpkg is asked in check mode too (a read); M(ansible.builtin.apt) then reports what it would install.
  diff_mode:
    support: none
    description: No diff.
  platform:
    support: full
    platforms: debian
    description: Debian and its derivatives (dpkg and APT).
options:
  name:
    description: The packages.
    type: list
    elements: str
    required: true
  state:
    description: Only V(present); M(ansible.builtin.apt) removes packages.
    type: str
    choices: [present]
    default: present
  update_cache:
    description: Passed to M(ansible.builtin.apt) when it runs.
    type: bool
    default: false
  cache_valid_time:
    description: Passed to M(ansible.builtin.apt) when it runs (seconds).
    type: int
    default: 0
seealso:
  - module: ansible.builtin.apt
"""

EXAMPLES = r"""
- name: Install nginx and php-fpm
  unistra.itop.packages:
    name: [nginx, php8.2-fpm]
    update_cache: true
    cache_valid_time: 3600
"""

RETURN = r"""
packages:
  description: The packages asked for.
  returned: always
  type: list
  elements: str
  sample: [nginx, php8.2-fpm]
missing:
  description: Empty when dpkg lists them all installed (and apt was not run).
  returned: when apt was not needed
  type: list
  elements: str
  sample: []
"""
