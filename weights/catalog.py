"""The files the project names on the Hugging Face Hub: the default weights' repos and files, the short
names of --weights, --vae, --lora and --unet, the distilled models' files and the sha256 pinned for
the releases docs/model-facts.md lists. weights/hub.py fetches them."""

from dataclasses import dataclass

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_FILE = "v1-5-pruned-emaonly.safetensors"
SDXL_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_FILE = "sd_xl_base_1.0.safetensors"  # fp16, 6.94 GB
DREAMSHAPER_XL_REPO = "Lykon/dreamshaper-xl-1-0"  # a diffusers folder only (the paper's SDXL model)
SDXL_VAE_FIX_REPO = "madebyollin/sdxl-vae-fp16-fix"
SDXL_VAE_FIX_FILE = "sdxl_vae.safetensors"  # the file the paper's SDXL code loads (docs/model-facts.md 10.1)
# The weights of a repo named without a file: its single file; any other repo is a diffusers folder.
SINGLE_FILES = {
    SD15_REPO: SD15_FILE,
    SDXL_REPO: SDXL_FILE,
    SDXL_VAE_FIX_REPO: SDXL_VAE_FIX_FILE,
    "stabilityai/sdxl-vae": "sdxl_vae.safetensors",
}
SHORT_NAMES = {  # --weights / --vae NAME
    "sd15": SD15_REPO,
    "sdxl": SDXL_REPO,
    "dreamshaper-xl": DREAMSHAPER_XL_REPO,
    "sdxl-vae-fp16-fix": SDXL_VAE_FIX_REPO,
}


@dataclass(frozen=True)
class DistilledFile:
    """A published file of a distilled model (../shared/reference/distilled-and-guidance.md section 2):
    its repo, its file (None: the repo is a diffusers folder), the family it is made for and what it is."""

    repo: str
    file: str | None
    family: str  # a name of weights.FAMILIES
    kind: str  # "lora" (--lora), "unet" (--unet) or "weights" (--weights)

    @property
    def spec(self) -> str:
        return self.repo if self.file is None else f"{self.repo}/{self.file}"


LIGHTNING, DMD2, HYPER = "ByteDance/SDXL-Lightning", "tianweiy/DMD2", "ByteDance/Hyper-SD"
PEFT_FILE = "pytorch_lora_weights.safetensors"  # diffusers' name for a LoRA it saves
# The names say what the presets' warning looks for (solvers.presets.DISTILLED's marks).
DISTILLED_FILES = {
    "lcm-lora-sd15": DistilledFile("latent-consistency/lcm-lora-sdv1-5", PEFT_FILE, "sd1", "lora"),
    "lcm-lora-sdxl": DistilledFile("latent-consistency/lcm-lora-sdxl", PEFT_FILE, "sdxl", "lora"),
    "lightning-4step-lora": DistilledFile(LIGHTNING, "sdxl_lightning_4step_lora.safetensors", "sdxl", "lora"),
    "lightning-8step-lora": DistilledFile(LIGHTNING, "sdxl_lightning_8step_lora.safetensors", "sdxl", "lora"),
    "lightning-4step-unet": DistilledFile(LIGHTNING, "sdxl_lightning_4step_unet.safetensors", "sdxl", "unet"),
    "lightning-8step-unet": DistilledFile(LIGHTNING, "sdxl_lightning_8step_unet.safetensors", "sdxl", "unet"),
    "dmd2-4step-lora": DistilledFile(DMD2, "dmd2_sdxl_4step_lora_fp16.safetensors", "sdxl", "lora"),
    "dmd2-4step-unet": DistilledFile(DMD2, "dmd2_sdxl_4step_unet_fp16.bin", "sdxl", "unet"),
    "hyper-sd15-8step-lora": DistilledFile(HYPER, "Hyper-SD15-8steps-lora.safetensors", "sd1", "lora"),
    "hyper-sdxl-8step-lora": DistilledFile(HYPER, "Hyper-SDXL-8steps-lora.safetensors", "sdxl", "lora"),
    "hyper-sd15-8step-cfg-lora": DistilledFile(
        HYPER, "Hyper-SD15-8steps-CFG-lora.safetensors", "sd1", "lora"
    ),
    "hyper-sdxl-8step-cfg-lora": DistilledFile(
        HYPER, "Hyper-SDXL-8steps-CFG-lora.safetensors", "sdxl", "lora"
    ),
    "tcd-lora-sd15": DistilledFile("h1t/TCD-SD15-LoRA", PEFT_FILE, "sd1", "lora"),
    "tcd-lora-sdxl": DistilledFile("h1t/TCD-SDXL-LoRA", PEFT_FILE, "sdxl", "lora"),
    "flash-lora-sd15": DistilledFile("jasperai/flash-sd", PEFT_FILE, "sd1", "lora"),
    "flash-lora-sdxl": DistilledFile("jasperai/flash-sdxl", PEFT_FILE, "sdxl", "lora"),
    "sdxl-turbo": DistilledFile(
        "stabilityai/sdxl-turbo", "sd_xl_turbo_1.0_fp16.safetensors", "sdxl", "weights"
    ),
    "lcm-dreamshaper-v7": DistilledFile("SimianLuo/LCM_Dreamshaper_v7", None, "sd1", "weights"),
}
SHORT_NAMES |= {name: entry.spec for name, entry in DISTILLED_FILES.items() if entry.kind == "weights"}


def distilled_names(kind: str) -> list[str]:
    """The short names of the distilled files of one kind ("lora", "unet", "weights"), for --help."""
    return [name for name, entry in DISTILLED_FILES.items() if entry.kind == kind]


# The sha256 of the files named above that docs/model-facts.md section 7 lists: a Hub file that
# changed is refused, not run under the old name.
PINNED_SHA256 = {
    (SD15_REPO, SD15_FILE): "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    (SDXL_REPO, SDXL_FILE): "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
}
