"""SVM layer probing: score every candidate node by patient-grouped CV F1, choose the nodes."""
