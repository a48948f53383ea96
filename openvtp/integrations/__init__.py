"""openvtp in other libraries' formats: diffusers (`AutoencoderVTP`, export) and the Hugging Face Hub (push, model
cards). Nothing here is imported by `openvtp --help`; diffusers is the optional extra `openvtp[diffusers]`."""
