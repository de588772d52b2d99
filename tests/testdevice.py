"""A device that is not the CPU, on every machine: `testdevice`, for the tests of the accelerator path.

Its tensors keep their data in CPU tensors but say `testdevice:0`, and every operation on them checks what CUDA and
MPS check: a CPU tensor mixed into an operation fails ("Expected all tensors to be on the same device"), and, as on
MPS, there is no float64. It has a random generator of its own, as an accelerator has. Importing this module
registers the device in the process (PyTorch's PrivateUse1 backend, renamed) for good, and makes it the accelerator
that --device auto picks: so only the processes that a test starts import it.
"""

import torch
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

NAME = 'testdevice'
generator = torch.Generator()  # the device's own, saved and restored through torch.get_device_module(DEVICE)


class DeviceModule:
    """What torch.get_device_module(DEVICE) returns, as torch.cuda for CUDA."""

    def is_available(self):
        return True

    def is_initialized(self):
        return True

    def device_count(self):
        return 1

    def current_device(self):
        return 0

    def _is_in_bad_fork(self):
        return False

    def manual_seed_all(self, seed):
        generator.manual_seed(seed)

    def get_rng_state(self, device=None):
        return generator.get_state()

    def set_rng_state(self, state, device=None):
        generator.set_state(state)


class DeviceGuard(torch._C._acc.DeviceGuard):
    def type_(self):
        return torch._C._autograd.DeviceType.PrivateUse1


_setup_privateuseone_for_python_backend(NAME, backend_module=DeviceModule(), device_guard=DeviceGuard())
DEVICE = torch.device(NAME, 0)


class DeviceTensor(torch.Tensor):
    """A tensor on the test device: its data is a CPU tensor that only this class's operations reach."""

    @staticmethod
    def __new__(cls, data):
        if data.dtype == torch.float64:
            raise TypeError(f'Cannot convert a {NAME} tensor to float64 dtype: the device has no float64, like MPS')
        tensor = torch.Tensor._make_wrapper_subclass(
            cls,
            data.shape,
            strides=data.stride(),
            storage_offset=data.storage_offset(),
            dtype=data.dtype,
            device=DEVICE,
        )
        tensor.data_on_cpu = data
        return tensor

    def __repr__(self):
        return f'DeviceTensor({self.data_on_cpu!r}, device={DEVICE})'

    def __array__(self, *args, **kwargs):  # NumPy, matplotlib: as for a CUDA tensor
        raise TypeError(f"can't convert {NAME} tensor to numpy; use Tensor.cpu() to copy it to the CPU first")

    @classmethod
    def __torch_dispatch__(cls, op, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_cpu = op is torch.ops.aten._to_copy.default and torch.device(kwargs.get('device') or DEVICE).type == 'cpu'
        if op is not torch.ops.aten.copy_.default and not to_cpu:  # copies cross devices by design
            cpu = [t for t in tree_leaves((args, kwargs)) if type(t) is torch.Tensor and t.dim()]  # 0-d may, as CUDA
            if cpu:
                raise RuntimeError(
                    f'Expected all tensors to be on the same device, but found at least two devices, {DEVICE} and '
                    f'cpu! ({op})'
                )
        return run_on_cpu(op, args, kwargs, on_device=not to_cpu)


def run_on_cpu(op, args, kwargs, on_device=True):
    """Run an operation on the CPU data of its tensors, with the device's generator, and return its results on the
    device (an operation that writes into a tensor returns that tensor)."""
    inputs = {id(t.data_on_cpu): t for t in tree_leaves((args, kwargs)) if isinstance(t, DeviceTensor)}

    def unwrap(a):
        if isinstance(a, DeviceTensor):
            return a.data_on_cpu
        return torch.device('cpu') if isinstance(a, torch.device) and a.type == NAME else a

    args, kwargs = tree_map(unwrap, (args, kwargs))
    if any(a.name == 'generator' for a in op._schema.arguments) and kwargs.get('generator') is None:
        kwargs['generator'] = generator
    out = op(*args, **kwargs)
    if not on_device:
        return out

    def wrap(t):
        if type(t) is not torch.Tensor:
            return t
        return inputs[id(t)] if id(t) in inputs else DeviceTensor(t)

    return tree_map(wrap, out)


def make_on_device(op, *args, **kwargs):
    """Operations that make tensors on the device (torch.empty, torch.rand(..., device=...) and the like)."""
    return run_on_cpu(op, args, kwargs)


_library = torch.library.Library('_', 'IMPL')
_library.fallback(make_on_device, dispatch_key='PrivateUse1')
