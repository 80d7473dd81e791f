"""Training data for GeNVS (host-side numpy): procedural multi-primitive scenes written in the SRN layout
(procedural_scenes.py). The reader and the data module are framework-neutral: neutral/genvs/srn_dataset.py."""
