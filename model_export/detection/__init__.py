"""Detection utilities for the RetinaNet-style Detection Unit: anchors, box coding, matching."""
