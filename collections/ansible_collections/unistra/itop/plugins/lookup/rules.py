# Copyright: (c) 2026, Université de Strasbourg
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: rules
short_description: The collection's naming and artifact rules, as the release engine applies them
version_added: 0.2.0
description:
  - Returns the rules of C(module_utils/rules.py), the one place they are defined, so that a role's preflight checks
    its inputs exactly as the M(unistra.itop.release) module and C(itopctl) will.
author:
  - Université de Strasbourg, DNUM (@unistra)
options:
  _terms:
    description:
      - Names of rules, among C(release_id_pattern), C(reserved_ids), C(sha256_pattern), C(uri_schemes),
        C(uri_pattern), C(component_name_pattern), C(extension_name_pattern), C(deploy_phases).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Check a release id as the engine will
  ansible.builtin.assert:
    that:
      - release_id is match(lookup('unistra.itop.rules', 'release_id_pattern'))
      - release_id not in lookup('unistra.itop.rules', 'reserved_ids')
"""

RETURN = r"""
_raw:
  description: The value of each rule named (a pattern string, or a list of names).
  type: list
  elements: raw
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.unistra.itop.plugins.module_utils.rules import RULES


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        unknown = [term for term in terms if term not in RULES]
        if unknown:
            raise AnsibleLookupError(f"unknown rule(s) {', '.join(unknown)}: choose among {', '.join(sorted(RULES))}")
        return [RULES[term] for term in terms]
