"""The example script templates, shipped inside the package so a fresh install can run
the demo; an installation points ``templates:`` at its own folder."""
