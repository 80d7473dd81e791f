from torch_ref.mvdream.unet import MultiViewUNetModel  # noqa: F401
from torch_ref.mvdream.text_encoder import TextTransformer  # noqa: F401
from torch_ref.mvdream.vae import AutoencoderKL  # noqa: F401
from torch_ref.mvdream.schedule import NoiseSchedule, make_alphas_cumprod  # noqa: F401
from torch_ref.mvdream.cameras import get_camera, normalize_camera  # noqa: F401
from torch_ref.mvdream.samplers import guided_eps_fn, sample_ddim, sample_dpmpp_2m  # noqa: F401
from torch_ref.mvdream.sliding_window import sliding_window_eps_fn, window_indices  # noqa: F401
