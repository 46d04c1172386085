"""The transfer experiment: donors × receivers, controls, seeds, geometry and statistics.

``config``/``presets`` what a run is; ``layout`` where its files are; ``stages`` what it computes;
``run`` the one dispatcher; ``evaluate``/``measure`` one receiver's accuracy and geometry rows;
``jobs`` the same stages as cluster jobs; ``driver`` run → tables → statistics → summary.
"""
