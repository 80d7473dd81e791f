from mindspore_impl.mvdream.unet import MultiViewUNetModel  # noqa: F401
from mindspore_impl.mvdream.text_encoder import TextTransformer  # noqa: F401
from mindspore_impl.mvdream.tokenizer import CLIPTokenizer, load_tokenizer  # noqa: F401
from mindspore_impl.mvdream.vae import AutoencoderKL  # noqa: F401
from mindspore_impl.mvdream.schedule import NoiseSchedule, make_alphas_cumprod  # noqa: F401
from mindspore_impl.mvdream.cameras import get_camera, normalize_camera  # noqa: F401
from mindspore_impl.mvdream.samplers import guided_eps_fn, sample_ddim, sample_dpmpp_2m  # noqa: F401
from mindspore_impl.mvdream.sliding_window import sliding_window_eps_fn, window_indices  # noqa: F401
from mindspore_impl.mvdream.pipeline import MVDreamPipeline  # noqa: F401
