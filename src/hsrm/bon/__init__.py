"""Best-of-N selection: rank a prompt's N sampled answers by a head's score and keep the best.

One module per step, each command one config dataclass + one function:

* ``train``     ``hsrm train``: fit a head on a store's training prompts (``TrainConfig``, ``train``)
* ``evaluate``  ``hsrm evaluate``: saved heads on the prompts none trained on (``EvaluateConfig``)
* ``demo``      ``hsrm demo``: sample, cross-fit by prompt, report (``DemoConfig``, ``demo``)
* ``baselines`` the scorers every report carries (random, majority, log-prob, controls)
* ``scorers``   training-free selectors from per-token statistics (self-certainty, DeepConf, ...)
* ``quality``   pooled probes and stacked selectors; ``prune``: early stopping of samples
* ``report``    the numbers (``bon_report``: BoN@k, pass@k, AUROCs, CIs, gap closed)
* ``outputs``   the files (results.json / .md / .png / .html)

Sampling itself (``hsrm sample``) is shared by every use and lives in ``hsrm.sampling``.
"""
