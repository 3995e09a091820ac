"""Checks of the deployment files under deploy/ with the real tools.

promtool, prometheus and nginx come from Debian's packages; scripts/ensure-ops-tools
installs them when they are missing.
"""
