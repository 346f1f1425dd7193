"""Audio question data: manifests, the synthetic demo set, and the prompt-rendered training dataset."""
