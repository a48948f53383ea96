"""The embedded demo, beside the library: procedural scenes and photos (the embedded data), the attribute judge,
held-out figures, and the demo run that chains pre-training, stage 2, latents, a DiT and its figures on them.

The library reaches the embedded data only by name (`data.source=embedded`, `--data embedded`) through
`openvtp.data.registry`; nothing in `models`, `losses`, `data`, `train`, `eval` or `generation` imports this package.
"""
