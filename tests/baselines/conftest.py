import numpy as np
import pytest

from clinfuse.preprocess.prepared import PreparedCase


def make_prepared(mri, ct_bone, ct=None, brain=None, bone=None, case_id="c0"):
    mri = np.asarray(mri, dtype=np.float32)
    ct_bone = np.asarray(ct_bone, dtype=np.float32)
    ct = ct_bone if ct is None else np.asarray(ct, dtype=np.float32)
    brain = np.zeros(mri.shape, bool) if brain is None else brain
    bone = np.zeros(mri.shape, bool) if bone is None else bone
    return PreparedCase(case_id, mri, ct, ct_bone, np.eye(4), brain, bone)


@pytest.fixture
def prepared_factory():
    return make_prepared
