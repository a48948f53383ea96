"""Evaluation building blocks: FID, reconstruction metrics, k-NN, linear probes, zero-shot, retrieval, preprocessing,
feature caches and plots. Import the submodule you need (`from openvtp.eval.fid import ...`): they pull in different
heavy dependencies (Inception, LPIPS, matplotlib); `options` needs no torch."""
