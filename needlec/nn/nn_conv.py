"""needle's convolution module: NCHW in and out, the NHWC `conv` op inside."""

from __future__ import annotations

from .. import init, ops
from ..autograd import Tensor
from .nn_basic import Module, Parameter


class Conv(Module):
    """2-D convolution over an NCHW input with a square kernel and "same" padding k // 2.

    The weight (k, k, in, out) = kaiming_uniform(in*k*k, out*k*k) is drawn first, then the bias
    (out,) uniform in +-1/sqrt(in*k*k).

    >>> import needlec as nc
    >>> conv = nc.nn.Conv(3, 8, kernel_size=3, stride=2)
    >>> conv(nc.init.ones(2, 3, 16, 16)).shape
    (2, 8, 8, 8)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple,
        stride: int | tuple = 1,
        bias: bool = True,
        device=None,
        dtype="float32",
    ) -> None:
        super().__init__()
        k = kernel_size[0] if isinstance(kernel_size, tuple) else kernel_size
        stride = stride[0] if isinstance(stride, tuple) else stride
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = k
        self.stride = stride
        self.padding = k // 2
        kw = {"device": device, "dtype": dtype}
        fan_in, fan_out = in_channels * k * k, out_channels * k * k
        self.weight = Parameter(
            init.kaiming_uniform(fan_in, fan_out, shape=(k, k, in_channels, out_channels), **kw)
        )
        self.bias = None
        if bias:
            bound = 1.0 / fan_in**0.5
            self.bias = Parameter(init.rand(out_channels, low=-bound, high=bound, **kw))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, H, W) -> (N, out_channels, H', W'), where
        H' = (H + 2 * padding - k) // stride + 1 (ceil(H / stride) for an odd k), W' alike."""
        nhwc = x.transpose((1, 2)).transpose((2, 3))
        y = ops.conv(nhwc, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is not None:
            y = y + self.bias.reshape((1, 1, 1, self.out_channels)).broadcast_to(y.shape)
        return y.transpose((2, 3)).transpose((1, 2))
