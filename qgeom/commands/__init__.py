"""CLI commands defined in their own modules; qgeom.cli registers each one."""
